#!/usr/bin/env python3
"""Prints the report's tables 4.1 to 4.5 redone on hahsm (Markdown), from the CSV files
that scripts/bench-all.sh writes into docs/bench/, beside the report's Luna SA 5 figures.
Usage: scripts/bench-tables.py [docs/bench] > docs/bench/tables.md"""
import csv
import os
import sys

out = sys.argv[1] if len(sys.argv) > 1 else "docs/bench"


def rows(name):
    path = os.path.join(out, name)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return list(csv.DictReader(f))


def find(rs, config_prefix, threads=None, processes=None, mode=None):
    for r in rs:
        if not r["config"].startswith(config_prefix):
            continue
        if threads is not None and int(r["threads"]) != threads:
            continue
        if processes is not None and int(r["processes"]) != processes:
            continue
        if mode is not None and r["mode"] != mode:
            continue
        return r
    return None


def num(r, field="ops_per_s", digits=0):
    if r is None or r.get(field) in (None, ""):
        return "n/a"
    return f"{float(r[field]):,.{digits}f}"


def ratio(a, b):
    if a is None or b is None or not a.get("ops_per_s") or not b.get("ops_per_s"):
        return "n/a"
    bv = float(b["ops_per_s"])
    return f"{float(a['ops_per_s']) / bv:.2f}" if bv > 0 else "n/a"


HA = "hahsm HA slot"
sign, keygen = "rsa-sign:2048", "rsa-keygen:2048"

# Table 4.1
luna41 = {1: (87.315, 1.032), 3: (265.577, 0.899), 10: (468.872, 0.865), 20: (702.077, 1.032),
          60: (1287.616, 1.065), 100: (1560.108, None)}
t, tk = rows("threads.csv"), rows("keygen/threads.csv")
print("### Table 4.1: threads on the HA slot (test 3.4.8), RSA-2048\n")
print("| threads | Luna SA 5 sig/s | hahsm sig/s | raw sig/s | SoftHSM2 sig/s | hahsm/raw | hahsm/SoftHSM2 "
      "| Luna keys/s | hahsm keys/s | raw keys/s | SoftHSM2 keys/s | hahsm/SoftHSM2 |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
for n, (ls, lk) in luna41.items():
    s, k = find(t, HA, n), find(tk, HA, n)
    print(f"| {n} | {ls:,.0f} | {num(s)} | {num(s, 'raw_ops_per_s')} | {num(s, 'softhsm_ops_per_s')} "
          f"| {num(s, 'raw_ratio', 2)} | {num(s, 'softhsm_ratio', 2)} | {lk if lk is not None else 'n/a'} "
          f"| {num(k, digits=1)} | {num(k, 'raw_ops_per_s', 1)} | {num(k, 'softhsm_ops_per_s', 1)} "
          f"| {num(k, 'softhsm_ratio', 2)} |")

# Table 4.2
luna42 = {1: (87.315, 168.277, 253.897), 3: (265.577, 485.632, 637.541), 10: (468.872, 758.383, 886.203),
          20: (702.077, 991.724, 1258.795), 30: (847.944, 1322.468, 1572.186),
          60: (1287.616, 1619.471, 1792.804), 100: (1560.108, 1826.082, 2539.625)}
p = rows("processes.csv")
print("\n### Table 4.2: processes × threads on the HA slot (test 3.4.9), RSA-2048 signatures/s\n")
print("| threads/process | Luna 1 proc | hahsm 1 proc | Luna 2 procs | hahsm 2 procs | Luna 3 procs | hahsm 3 procs |")
print("|---|---|---|---|---|---|---|")
for n, luna in luna42.items():
    hs = [find(p, "HA slot", n, procs) for procs in (1, 2, 3)]
    if all(h is None for h in hs):
        continue
    print(f"| {n} | {luna[0]:,.0f} | {num(hs[0])} | {luna[1]:,.0f} | {num(hs[1])} | {luna[2]:,.0f} | {num(hs[2])} |")

# Tables 4.3 and 4.4
h, hk = rows("ha-vs-standalone.csv"), rows("keygen/ha-vs-standalone.csv")
PHYS, ONE = "3 members' physical slots", "standalone member"
print("\n### Table 4.3: HA overhead (test 3.4.10), RSA-2048, 3 threads in all\n")
print("| | Luna SA 5 sig/s | hahsm sig/s | Luna keys/s | hahsm keys/s |")
print("|---|---|---|---|---|")
print(f"| three members' physical slots at once (3 processes × 1 thread) | 765.3 | {num(find(h, PHYS, 1))} | 3.262 "
      f"| {num(find(hk, PHYS, 1), digits=1)} |")
print(f"| HA slot (1 process × 3 threads) | 265.6 | {num(find(h, HA, 3))} | 1.032 | {num(find(hk, HA, 3), digits=1)} |")
print(f"| hahsm only: one standalone member (no peers), 3 threads | | {num(find(h, ONE, 3))} | "
      f"| {num(find(hk, ONE, 3), digits=1)} |")

luna44 = {3: (765.3, 265.577), 9: (689.7, 431.964), 15: (784.8, 603.655), 21: (733.8, 702.062),
          24: (719.7, 730.997), 27: (782.4, 804.557), 30: (692.7, 847.944), 45: (709.2, 1077.446),
          60: (749.4, 1287.616)}
print("\n### Table 4.4: HA overhead against total threads (test 3.4.10), RSA-2048 signatures/s\n")
print("| total threads | Luna 3 standalone HSMs | hahsm 3 members' physical slots | Luna HA | hahsm HA slot "
      "| hahsm one standalone member | hahsm HA / standalone member |")
print("|---|---|---|---|---|---|---|")
for n, (ls, lh) in luna44.items():
    ha, phys, one = find(h, HA, n), find(h, PHYS, n // 3), find(h, ONE, n)
    if ha is None:
        continue
    print(f"| {n} | {ls:,.0f} | {num(phys)} | {lh:,.0f} | {num(ha)} | {num(one)} | {ratio(ha, one)} |")
print("\nKey generation, same layout (keys/s):\n")
print("| total threads | hahsm 3 members' physical slots | hahsm HA slot | hahsm one standalone member "
      "| HA / standalone member |")
print("|---|---|---|---|---|")
for n in (3, 9, 15, 24, 30, 60):
    ha, phys, one = find(hk, HA, n), find(hk, PHYS, n // 3), find(hk, ONE, n)
    if ha is None:
        continue
    print(f"| {n} | {num(phys, digits=1)} | {num(ha, digits=1)} | {num(one, digits=1)} | {ratio(ha, one)} |")

# Table 4.5
s, sk = rows("slow-member.csv"), rows("keygen/slow-member.csv")
print("\n### Table 4.5: a busy member (test 3.4.11), RSA-2048, 12 threads\n")
print("| | Luna SA 5 sig/s | hahsm sig/s | Luna keys/s | hahsm keys/s |")
print("|---|---|---|---|---|")
busy = HA + " (3 members), hsm1 busy"
print(f"| one HSM (hahsm: a standalone member) | 222.7 | {num(find(s, ONE))} | 1.730 | {num(find(sk, ONE), digits=1)} |")
ha_s = [r for r in s if r["config"].startswith(HA) and not r["config"].endswith("busy")]
ha_k = [r for r in sk if r["config"].startswith(HA) and not r["config"].endswith("busy")]
print(f"| HA | 331.8 | {num(ha_s[0] if ha_s else None)} | 0.975 | {num(ha_k[0] if ha_k else None, digits=1)} |")
print(f"| HA, one member busy | 297.3 | {num(find(s, busy))} | **0** (stalled) | {num(find(sk, busy), digits=1)} |")
for label, r in (("signing", ha_s[0] if ha_s else None), ("key generation", ha_k[0] if ha_k else None)):
    if r:
        print(f"\nBaselines in the same run, {label} on 12 threads: raw {num(r, 'raw_ops_per_s', 1)}/s, "
              f"SoftHSM2 {num(r, 'softhsm_ops_per_s', 1)}/s.", end="")
print()

# Every mode
m = rows("modes.csv")
if m:
    print("\n### Every mode on the HA slot (3 members)\n")
    print("| mode | threads | hahsm ops/s | p50 µs | p99 µs | raw ops/s | hahsm/raw | SoftHSM2 ops/s | hahsm/SoftHSM2 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in m:
        print(f"| {r['mode']} | {r['threads']} | {num(r)} | {r['p50_us']} | {r['p99_us']} | {num(r, 'raw_ops_per_s')} "
              f"| {num(r, 'raw_ratio', 3)} | {num(r, 'softhsm_ops_per_s')} | {num(r, 'softhsm_ratio', 2)} |")
