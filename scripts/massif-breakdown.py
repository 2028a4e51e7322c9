#!/usr/bin/env python3
"""Where a member's heap goes, from a massif profile (issue 17, item 2).

    massif-breakdown.py MASSIF_FILE OBJECTS [SNAPSHOT]

Takes one detailed snapshot (by default the last detailed one before the heap
starts to shrink, i.e. the member at rest before its shutdown), attributes each
allocation to the structure that made it by the first frame, counting from
malloc outwards, that names one (the rules below), and prints bytes and bytes
per object for each. Massif's own tree is cut at its recording threshold (1 %
by default): allocations below it are counted as "below massif's threshold".
"""
import re
import sys

RULES = [
    # (category, regex on a frame, optional regex that a frame nearer malloc must match)
    ("index: HashMap<(attribute, value), set> table", r"ObjectIndex::insert", r"^(0x\w+: )?(reserve|reserve_rehash|entry)<\(u64"),
    ("index: BTreeSet<Ouid> nodes, one set per value", r"ObjectIndex::insert", r"SetValZST"),
    ("index: value keys (Vec<u8>)", r"ObjectIndex::insert", None),
    ("LiveObjects.by_ouid BTreeMap nodes", r"LiveObjects::insert", None),
    ("ObjectEntry.attrs: Template BTreeMap nodes (a second copy)", r"bulk_build_from_sorted_iter<u64, hahsm_token::attr::AttrValue", None),
    ("ObjectEntry.attrs: values cloned", r"ObjectEntry::from_state|::template\b", None),
    ("Arc<ObjectEntry>", r"ArcInner<hahsmd::partition::ObjectEntry>", None),
    ("Arc<ObjectEntry>", r"ActivePartition::open \(partition.rs:30[01]\)", r"Arc|sync"),
    ("WriteState.versions HashMap<Ouid, u64>", r"reserve<\(hahsm_token::ouid::Ouid, u64\)", None),
    ("content digest HashMap<Ouid, [u8; 32]>", r"reserve<\(hahsm_token::ouid::Ouid, \[u8; 32\]\)", None),
    ("WriteState.versions HashMap<Ouid, u64>", r"ActivePartition::open \(partition.rs:25[45]\)", None),
    ("content digest HashMap<Ouid, [u8; 32]>", r"ActivePartition::open \(partition.rs:29\d\)", r"hash|reserve|insert"),
    ("Replica.objects BTreeMap<Ouid, ObjectState> nodes", r"bulk_build_from_sorted_iter<hahsm_token::ouid::Ouid, hahsm_replica::ObjectState|Replica.*restore|^(0x\w+: )?new<hahsm_token::ouid::Ouid, hahsm_replica::ObjectState", None),
    ("ObjectState.attrs: BTreeMap<u64, (Stamp, AttrValue)> nodes", r"insert_entry<u64, \(hahsm_token::oplog::Stamp|ObjectState<S>::merge_attr", None),
    ("ObjectState.attrs: values (Vec<u8>)", r"postcard|from_bytes", None),
    ("SQLite (page cache, statements)", r"sqlite3|rusqlite", None),
    ("TLS and connections", r"rustls|hahsm_link|aws_lc", None),
    ("key cache", r"key_cache|KeyCache", None),
    ("tasks of connections and requests (tokio)", r"tokio::runtime::task::core::Cell", None),
    ("recent ops", r"RecentOps|recent_ops", None),
]


def parse(path):
    snaps, cur = [], None
    lines = open(path).read().splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("snapshot="):
            cur = {"n": int(line.split("=")[1]), "tree": None}
            snaps.append(cur)
        elif line.startswith("mem_heap_B="):
            cur["heap"] = int(line.split("=")[1])
        elif line.startswith("mem_heap_extra_B="):
            cur["extra"] = int(line.split("=")[1])
        elif line.startswith("heap_tree=") and line != "heap_tree=empty":
            nodes = []
            i += 1
            while i < len(lines) and re.match(r"^\s*n\d+:", lines[i]):
                m = re.match(r"^(\s*)n(\d+): (\d+) (.*)$", lines[i])
                nodes.append((len(m.group(1)), int(m.group(3)), m.group(4)))
                i += 1
            cur["tree"] = nodes
            continue
        i += 1
    return snaps


def attribute(nodes):
    """[(bytes, path)] where path is the frames from malloc outwards."""
    out, stack = [], []
    for k, (depth, size, text) in enumerate(nodes):
        stack = stack[:depth]
        stack.append(text)
        children = 0
        for depth2, size2, _ in nodes[k + 1:]:
            if depth2 <= depth:
                break
            if depth2 == depth + 1:
                children += size2
        own = size - children
        if own > 0 and depth > 0:
            out.append((own, list(stack[1:])))
    return out


def category(path):
    # The innermost frame (nearest malloc) that a rule names decides.
    for j, f in enumerate(path):
        for name, frame, nearer in RULES:
            if re.search(frame, f) and (nearer is None or any(re.search(nearer, g) for g in path[:j])):
                return name
    if any("below massif's threshold" in f for f in path):
        return "below massif's threshold (each < 1 %)"
    first = next((f for f in path if "hahsm" in f), path[-1] if path else "?")
    return "other: " + re.sub(r"^0x[0-9A-F]+: ", "", first)[:90]


def main():
    path, objects = sys.argv[1], int(sys.argv[2])
    snaps = parse(path)
    detailed = [s for s in snaps if s["tree"]]
    if len(sys.argv) > 3:
        snap = next(s for s in detailed if s["n"] == int(sys.argv[3]))
    else:
        peak = max(s["heap"] for s in snaps)
        at_rest = [s for s in detailed if s["heap"] >= 0.97 * peak]
        snap = at_rest[-1]
    totals = {}
    for size, p in attribute(snap["tree"]):
        c = category(p)
        totals[c] = totals.get(c, 0) + size
    heap, extra = snap["heap"], snap.get("extra", 0)
    print(f"snapshot {snap['n']}: heap {heap:,} B useful + {extra:,} B malloc overhead, {objects:,} objects")
    print(f"{'bytes':>12} {'B/object':>9} {'share':>6}  what")
    for c, b in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(f"{b:>12,} {b / objects:>9.0f} {100 * b / heap:>5.1f}%  {c}")
    print(f"{extra:>12,} {extra / objects:>9.0f} {100 * extra / heap:>5.1f}%  malloc's own overhead (massif's extra-heap)")


main()
