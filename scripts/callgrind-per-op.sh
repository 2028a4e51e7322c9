#!/usr/bin/env bash
# Instructions per P-256 signature, counted by callgrind (issue 17, item 1):
# on this shared machine CPU time is noisy, instruction counts are not.
#
# Runs examples/sign_count twice (N1 and N2 signatures, the rest equal) in
# each of two set-ups, every process under `valgrind --tool=callgrind`:
#   raw     aws-lc-rs signing in-process;
#   module  the application (with libhahsm_pkcs11.so) and the member
#           (started under HAHSM_MEMBER_WRAPPER).
# Per signature = (total at N2 - total at N1) / (N2 - N1): start-up, key
# generation and shutdown cancel out. Also printed, the same way: the
# application's instructions inside the module's C_SignInit + C_Sign, and
# the functions that gained most instructions per signature on each side
# (self cost, from callgrind_annotate), for where they go.
#
#   cargo build --release -p hahsmd -p hahsm-cli -p hahsm-pkcs11 -p hahsm-it --example sign_count
#   HAHSM_BIN_DIR=$PWD/target/release scripts/callgrind-per-op.sh [N1] [N2] [THREADS] [OUT_DIR]
set -euo pipefail
BIN=${HAHSM_BIN_DIR:?set HAHSM_BIN_DIR to the release target directory}
EX=$BIN/examples/sign_count
N1=${1:-500}
N2=${2:-2500}
THREADS=${3:-1}
OUT=${4:-$(mktemp -d /tmp/callgrind-per-op.XXXXXX)}
mkdir -p "$OUT"
CG=(valgrind --tool=callgrind --dump-instr=no)

# SKIP_RUN=1: only the analysis, of the profiles already in OUT_DIR.
[ "${SKIP_RUN:-0}" = 1 ] || for n in "$N1" "$N2"; do
  "${CG[@]}" --callgrind-out-file="$OUT/raw-$n.out" "$EX" raw "$n" 2>"$OUT/raw-$n.log"
  HAHSM_MEMBER_WRAPPER="${CG[*]} --callgrind-out-file=$OUT/member-$n.%p.out" \
    "${CG[@]}" --callgrind-out-file="$OUT/app-$n.out" "$EX" module "$n" "$THREADS" 2>"$OUT/app-$n.log"
done

# The member's profile is the one member file of each run (the member starts once).
member() { ls "$OUT"/member-"$1".*.out | head -n 1; }

python3 - "$OUT" "$N1" "$N2" "$(member "$N1")" "$(member "$N2")" <<'EOF'
import re, subprocess, sys
out, n1, n2, m1, m2 = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
dn = n2 - n1

def total(path):
    for line in open(path):
        if line.startswith("totals:") or line.startswith("summary:"):
            return int(line.split()[1])
    raise SystemExit(f"no totals in {path}")

def functions(path, inclusive):
    """{function: instructions} from callgrind_annotate."""
    text = subprocess.run(
        ["callgrind_annotate", "--threshold=100", "--auto=no", f"--inclusive={'yes' if inclusive else 'no'}", path],
        capture_output=True, text=True, check=True).stdout
    costs = {}
    # The function table: after the header line "Ir  file:function", to the end.
    table = text.split("file:function", 1)[1].split("\n", 2)[2]
    for line in table.splitlines():
        m = re.match(r"^\s*([\d,]+)\s+(?:\([^)]*\)\s+)?(\S.*)$", line)
        if not m or "PROGRAM TOTALS" in line:
            continue
        name = re.sub(r"\s+\[[^\]]*\]$", "", m.group(2))
        name = name.split(":", 1)[1] if ":" in name and not name.startswith("0x") else name
        cost = int(m.group(1).replace(",", ""))
        # Self costs of one function's entries (one per source file its code
        # came from) add up; inclusive ones overlap, so the largest stands.
        costs[name] = max(costs.get(name, 0), cost) if inclusive else costs.get(name, 0) + cost
    return costs

def per_op(a, b):
    return (b - a) / dn

raw = per_op(total(f"{out}/raw-{n1}.out"), total(f"{out}/raw-{n2}.out"))
app = per_op(total(f"{out}/app-{n1}.out"), total(f"{out}/app-{n2}.out"))
mem = per_op(total(m1), total(m2))
inc1, inc2 = functions(f"{out}/app-{n1}.out", True), functions(f"{out}/app-{n2}.out", True)
module = sum(per_op(inc1.get(f, 0), inc2.get(f, 0)) for f in ("C_SignInit", "C_Sign"))
print(f"instructions per P-256 signature (callgrind, ({n2} - {n1}) signatures):")
print(f"  raw aws-lc-rs (EcdsaKeyPair::sign)          {raw:>10,.0f}")
print(f"  application process (cryptoki + module)     {app:>10,.0f}")
print(f"    of which inside C_SignInit + C_Sign       {module:>10,.0f}")
print(f"  member process                              {mem:>10,.0f}")
print(f"  application + member                        {app + mem:>10,.0f}   ({raw / (app + mem):.2f} of raw's count per signature)")
CATEGORIES = [
    # (what, regex on the function's name), first match wins
    ("signature arithmetic (P-256, SHA-256, bignum)", r"p256|nistz256|ecp_|ec_GFp|ec_scalar|ec_point|bn_|BN_|ECDSA|ecdsa|sha256|SHA256|beeu|felem|fiat_"),
    ("TLS record crypto (AES-GCM)", r"aes|gcm|GCM|ghash|AES|aead|EVP_AEAD"),
    ("TLS state machine (rustls)", r"rustls"),
    ("allocation (malloc, free)", r"malloc|free|calloc|realloc|_int_|tcache|__rust_alloc|__rust_dealloc|alloc::alloc"),
    ("copies (memcpy, memmove, memset)", r"memcpy|memmove|memset|memcmp|__memc|__mems"),
    ("locks and atomics", r"pthread_mutex|lll_|futex|Mutex|RwLock|parking_lot|Condvar|sync::"),
    ("async runtime (tokio)", r"tokio"),
    ("encoding, framing (postcard, serde, hahsm_proto, hahsm_link)", r"postcard|serde|hahsm_proto|hahsm_link|varint"),
    ("the member's request handling (hahsmd, hahsm_token)", r"hahsmd|hahsm_token|hahsm_crypto"),
    ("the module (hahsm_pkcs11, hahsm_client)", r"hahsm_pkcs11|hahsm_client|C_Sign"),
    ("cryptoki (the application's PKCS#11 binding)", r"cryptoki"),
    ("system call entry (libc wrappers)", r"__libc|syscall|epoll|recv|send|read|write|poll|clock_gettime"),
    ("other aws-lc", r"aws_lc|OPENSSL|CRYPTO_|EVP_|RAND|rand"),
]

def category(name):
    for what, rx in CATEGORIES:
        if re.search(rx, name):
            return what
    return "other"

for side, a, b, per in (("member", m1, m2, mem), ("application", f"{out}/app-{n1}.out", f"{out}/app-{n2}.out", app)):
    s1, s2 = functions(a, False), functions(b, False)
    gained = sorted(((per_op(s1.get(f, 0), s2.get(f, 0)), f) for f in set(s1) | set(s2)), reverse=True)
    print(f"\n{side}: instructions per signature by kind of work (self cost of each function, by its name)")
    kinds = {}
    for cost, f in gained:
        kinds[category(f)] = kinds.get(category(f), 0) + cost
    for what, cost in sorted(kinds.items(), key=lambda kv: -kv[1]):
        print(f"  {cost:>9,.0f}  {100 * cost / per:5.1f} %  {what}")
    print(f"{side}: the functions that gained most instructions per signature (self cost)")
    for cost, f in gained[:25]:
        print(f"  {cost:>9,.0f}  {100 * cost / per:5.1f} %  {f[:150]}")
print(f"\nprofiles in {out}")
EOF
