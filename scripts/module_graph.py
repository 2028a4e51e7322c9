#!/usr/bin/env python3
"""Finds circles between the modules (files) of one crate.

Reads the "uses" edges cargo-modules draws (DOT on stdin) and adds the edges
of every `crate::...` and `super::...` path written in the code itself, which
cargo-modules does not draw; prints each circle and exits 1 if there is one.
Usage: cargo modules dependencies ... | module_graph.py CRATE_NAME SRC_DIR [ROOT_FILE]
"""
import os
import re
import sys

crate, src = sys.argv[1], sys.argv[2]
root_file = sys.argv[3] if len(sys.argv) > 3 else "lib.rs"
edges = {}


def add(a, b):
    if a != b:
        edges.setdefault(a, set()).add(b)


for line in sys.stdin:
    m = re.match(r'\s*"([^"]+)" -> "([^"]+)" \[label="uses"', line)
    if m:
        add(m.group(1), m.group(2))

# The module of every source file.
modules = {}
for dirpath, _, files in os.walk(src):
    for f in files:
        if not f.endswith(".rs"):
            continue
        rel = os.path.relpath(os.path.join(dirpath, f), src)[:-3].split(os.sep)
        if rel[-1] == "mod":
            rel = rel[:-1]
        if rel in (["lib"], ["main"]):
            if f != root_file:
                continue
            rel = []
        modules[os.path.join(dirpath, f)] = "::".join([crate] + rel)
known = set(modules.values())


def resolve(path):
    """The longest known module that prefixes a `::` path."""
    parts = path.split("::")
    for k in range(len(parts), 0, -1):
        cand = "::".join(parts[:k])
        if cand in known:
            return cand
    return None


for file, mod in modules.items():
    code = open(file, encoding="utf-8").read()
    # Tests may reach anywhere in the crate.
    code = re.split(r"#\[cfg\(test\)\]\s*mod tests", code)[0]
    code = re.sub(r"//[^\n]*", "", code)
    for m in re.finditer(r"\bcrate::([A-Za-z_][A-Za-z0-9_]*(?:::[A-Za-z_][A-Za-z0-9_]*)*)", code):
        target = resolve(crate + "::" + m.group(1))
        if target and target != crate:
            add(mod, target)
    parent = mod.rsplit("::", 1)[0] if "::" in mod else mod
    is_mod_rs = file.endswith("mod.rs")
    here = mod if is_mod_rs else parent
    for m in re.finditer(r"\bsuper::([A-Za-z_][A-Za-z0-9_]*(?:::[A-Za-z_][A-Za-z0-9_]*)*)", code):
        base = here.rsplit("::", 1)[0] if is_mod_rs else here
        target = resolve(base + "::" + m.group(1))
        if target:
            add(mod, target)

index, low, stack, on, circles, counter = {}, {}, [], set(), [], [0]


def visit(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on.add(v)
    for w in edges.get(v, ()):
        if w not in index:
            visit(w)
            low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        scc = []
        while True:
            w = stack.pop()
            on.discard(w)
            scc.append(w)
            if w == v:
                break
        if len(scc) > 1:
            circles.append(sorted(scc))


sys.setrecursionlimit(10000)
for v in list(edges):
    if v not in index:
        visit(v)
if not edges:
    sys.exit(f"module_graph: no edges for {crate}")
for c in circles:
    inner = [f"{a} -> {b}" for a in c for b in sorted(edges.get(a, ())) if b in c]
    print(f"{crate}: modules in a circle: {', '.join(c)}\n    " + "\n    ".join(inner))
sys.exit(1 if circles else 0)
