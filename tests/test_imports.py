"No import cycles between the package's own modules, counting imports at any depth (top level and inside functions)."
import ast
from pathlib import Path
from conftest import ROOT

PKG = ROOT / "vlm3_nb"

def module_graph() -> dict:
    mods = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p for p in PKG.rglob("*.py") if p.name != "_modidx.py"}
    graph = {}
    for name, path in mods.items():
        base, out = (name if path.name == "__init__.py" else name.rsplit(".", 1)[0]), set()
        for n in ast.walk(ast.parse(path.read_text())):
            if isinstance(n, ast.Import): cands = [a.name for a in n.names]
            elif isinstance(n, ast.ImportFrom):
                b = base.rsplit(".", n.level - 1)[0] if n.level > 1 else base
                m = (f"{b}.{n.module}" if n.module else b) if n.level else (n.module or "")
                cands = [m] + [f"{m}.{a.name}" for a in n.names]
            elif isinstance(n, ast.Call) and getattr(n.func, "attr", getattr(n.func, "id", "")) == "import_module" and n.args \
                    and isinstance(n.args[0], ast.Constant): cands = [str(n.args[0].value)]
            else: continue
            for c in cands:
                while c and c not in mods and "." in c: c = c.rsplit(".", 1)[0]
                if c in mods and c not in (name, "vlm3_nb"): out.add(c)
        graph[name] = out
    return graph

def cycles(graph) -> list:
    state, stack, found = {}, [], []
    def dfs(u):
        state[u] = 1; stack.append(u)
        for v in sorted(graph[u]):
            if state.get(v) == 1: found.append(stack[stack.index(v):] + [v])
            elif v not in state: dfs(v)
        stack.pop(); state[u] = 2
    for m in sorted(graph):
        if m not in state: dfs(m)
    return found

def test_detector_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []

def test_no_import_cycles():
    g = module_graph()
    assert len(g) > 20 and "vlm3_nb.families.qwen2_vl" in g and "vlm3_nb.bench" in g
    found = cycles(g)
    assert not found, "import cycles: " + "; ".join(" -> ".join(c) for c in found)

def test_qwen_names_only_in_its_family():
    "Outside families/qwen2_vl.py no module imports Qwen2-VL classes, qwen_vl_utils or get_rope_index."
    bad = []
    for p in PKG.rglob("*.py"):
        if p.name == "_modidx.py" or p.name == "qwen2_vl.py": continue
        for n in ast.walk(ast.parse(p.read_text())):
            names = [a.name for a in n.names] if isinstance(n, (ast.Import, ast.ImportFrom)) else []
            mod = getattr(n, "module", "") or ""
            if any(x.startswith("Qwen2VL") or x == "get_rope_index" for x in names) or "qwen_vl_utils" in mod or "qwen2_vl" in mod and "families" not in mod \
                    or any("qwen_vl_utils" in x for x in names):
                bad.append(f"{p.relative_to(ROOT)}:{n.lineno}")
            if isinstance(n, ast.Attribute) and n.attr == "get_rope_index": bad.append(f"{p.relative_to(ROOT)}:{n.lineno} get_rope_index")
    assert not bad, "Qwen2-VL internals outside families/qwen2_vl.py: " + ", ".join(bad)


def test_cli_startup_imports_no_framework():
    "Every `vlm3 ...` (and each torchrun worker) builds the whole parser first: it must not pull in torch, transformers or deepeval (seconds each)."
    import subprocess, sys
    code = ("import sys, vlm3_nb.cli as c; c.build_parser(); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers', 'deepeval', 'peft', 'datasets', 'timm'}))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr
