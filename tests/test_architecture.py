"""The module graph: no import cycles, no llmos import hidden inside a function to dodge one,
run.py standing alone, and the layers of ARCHITECTURE.md (serving never imports training,
the kernel imports nothing above it, data knows no trainer)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "llmos"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, list[tuple[str, bool]]]:
    """{module: [(llmos module it imports, whether the import is inside a function)]}."""
    mods = {module_name(p): p for p in ROOT.rglob("*.py")}
    graph = {}
    for name, path in mods.items():
        tree = ast.parse(path.read_text())
        inside = {
            id(n)
            for f in ast.walk(tree)
            if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
            for n in ast.walk(f)
        }
        found = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from llmos import runs` imports the module llmos.runs
                targets = [
                    f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in mods else node.module
                    for a in node.names
                ]
            else:
                continue
            found += [(t, id(node) in inside) for t in targets if t.split(".")[0] == "llmos"]
        graph[name] = found
    return graph


def test_no_cycles_and_no_imports_inside_functions():
    graph = imports()
    hidden = [(m, t) for m, ts in graph.items() for t, inside in ts if inside]
    assert not hidden, f"llmos imports inside functions: {hidden}"
    edges = {m: {t for t, _ in ts if t != m and t != "llmos"} for m, ts in graph.items()}
    state: dict[str, int] = {}

    def visit(m, path):
        state[m] = 1
        for t in edges.get(m, ()):
            assert state.get(t) != 1, "import cycle: " + " -> ".join([*path, m, t])
            if t not in state:
                visit(t, [*path, m])
        state[m] = 2

    for m in edges:
        if m not in state:
            visit(m, [])


def reachable(start: str, graph) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        m = todo.pop()
        for t, _ in graph.get(m, ()):
            if t not in seen:
                seen.add(t)
                todo.append(t)
    return seen


def test_layers():
    graph = imports()
    assert reachable("llmos.run", graph) == set()  # the second file: numpy + stdlib only
    for m in graph:
        deps = reachable(m, graph)
        if m.startswith("llmos.serve"):
            assert not {d for d in deps if d.startswith("llmos.train")}, m
        if m.startswith("llmos.data"):
            assert not {d for d in deps if d.startswith(("llmos.train", "llmos.infer"))}, m
        if m.startswith(("llmos.infer", "llmos.agent")):  # tasks sit below the agent
            assert not {d for d in deps if d.startswith(("llmos.tasks", "llmos.train"))}, m
        if m.startswith("llmos.tasks"):
            assert not {d for d in deps if d.startswith(("llmos.train", "llmos.serve"))}, m
    kernel = ["common", "config", "model", "tokenizer", "chat_format", "checkpoint"]
    for m in kernel:
        above = {d for d in reachable(f"llmos.{m}", graph) if d[6:] not in kernel}
        assert not above, f"llmos.{m} imports {above}"
