#!/usr/bin/env python3
"""Renders a Helm chart's templates the way `helm template` does, for the constructs Larder's
chart uses, where no `helm` binary can be installed (it is not packaged for Debian 12 nor on
PyPI).

This is a small interpreter of Go's text/template with Helm's functions, not Helm itself; it
supports: {{ }} actions with `-` whitespace trimming, comments, `.Values`/`.Release`/`.Chart`
paths, `$` and `$var`, `if`/`else if`/`else`/`end` (with `not`, `and`, `or`, `eq`),
`range $k, $v := ...`, `define`/`include`, pipelines, parentheses, and the functions `quote`,
`default`, `toYaml`, `nindent`, `indent`, `printf`, `trunc`, `trimSuffix`, `b64enc`. Anything
else is an error, never silently skipped.

    helm_template.py CHART_DIR [--set key.path=value ...] [--json]

prints the rendered manifests (`---` separated, with `# Source:` lines like `helm template`),
or with --json the parsed YAML documents as one JSON array (the YAML must parse).
"""

import base64
import json
import os
import re
import sys

import yaml


class TemplateError(Exception):
    pass


TOKEN = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.S)


def tokenize(src):
    """Text and action tokens, with Go's `{{-`/`-}}` whitespace trimming applied."""
    out = []
    pos = 0
    trim_next = False
    for m in TOKEN.finditer(src):
        text = src[pos:m.start()]
        if trim_next:
            text = text.lstrip()
        if m.group(1):
            text = text.rstrip()
        out.append(("text", text))
        if not m.group(2).startswith("/*"):
            out.append(("action", m.group(2)))
        trim_next = bool(m.group(3))
        pos = m.end()
    text = src[pos:]
    if trim_next:
        text = text.lstrip()
    out.append(("text", text))
    return out


def parse(tokens, i=0, stop=("end",)):
    """Nodes until one of `stop` keywords; returns (nodes, index, stopping keyword action)."""
    nodes = []
    while i < len(tokens):
        kind, val = tokens[i]
        i += 1
        if kind == "text":
            if val:
                nodes.append(("text", val))
            continue
        word = val.split(None, 1)[0] if val else ""
        rest = val[len(word):].strip()
        if word in ("end", "else"):
            if word in stop or "end" in stop:
                return nodes, i, val
            raise TemplateError(f"unexpected {{{{{val}}}}}")
        if word == "if":
            branches = []
            cond = rest
            while True:
                body, i, ended = parse(tokens, i, ("end", "else"))
                branches.append((cond, body))
                if ended == "end":
                    break
                if ended.startswith("else if "):
                    cond = ended[len("else if "):].strip()
                elif ended == "else":
                    cond = None
                else:
                    raise TemplateError(f"bad {{{{{ended}}}}}")
            nodes.append(("if", branches))
        elif word == "range":
            m = re.match(r"(\$\w+)\s*,\s*(\$\w+)\s*:=\s*(.+)", rest)
            if not m:
                raise TemplateError(f"unsupported range: {val}")
            body, i, _ = parse(tokens, i, ("end",))
            nodes.append(("range", m.group(1), m.group(2), m.group(3), body))
        elif word == "define":
            name = json.loads(rest)
            body, i, _ = parse(tokens, i, ("end",))
            nodes.append(("define", name, body))
        elif word in ("with", "template", "block"):
            raise TemplateError(f"unsupported action: {val}")
        else:
            nodes.append(("action", val))
    if stop != ("end",) or True:
        return nodes, i, None


def split_args(expr):
    """Splits a command into arguments, keeping strings and parentheses whole."""
    args, cur, depth, quote = [], "", 0, None
    for ch in expr:
        if quote:
            cur += ch
            if ch == quote and not cur.endswith("\\" + quote):
                quote = None
            continue
        if ch in "\"`":
            quote = ch
            cur += ch
        elif ch == "(":
            depth += 1
            cur += ch
        elif ch == ")":
            depth -= 1
            cur += ch
        elif ch.isspace() and depth == 0:
            if cur:
                args.append(cur)
            cur = ""
        else:
            cur += ch
    if cur:
        args.append(cur)
    return args


def split_pipeline(expr):
    parts, cur, depth, quote = [], "", 0, None
    for ch in expr:
        if quote:
            cur += ch
            if ch == quote:
                quote = None
            continue
        if ch in "\"`":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "|" and depth == 0:
            parts.append(cur.strip())
            cur = ""
            continue
        cur += ch
    parts.append(cur.strip())
    return parts


def truthy(v):
    return not (v is None or v is False or v == 0 or v == "" or v == {} or v == [])


def to_yaml(v):
    if v in ({}, [], None):
        return "{}" if v != [] else "[]"
    return yaml.safe_dump(v, default_flow_style=False, sort_keys=True).rstrip("\n")


def go_printf(fmt, *args):
    return re.sub(r"%[sdv]", lambda _m, it=iter(args): str(next(it)), fmt)


class Renderer:
    def __init__(self, root):
        self.root = root
        self.defines = {}

    def lookup(self, path, dot):
        cur = dot
        for part in path.split(".")[1:] if path != "." else []:
            if not part:
                continue
            if isinstance(cur, dict):
                cur = cur.get(part)
            else:
                return None
        return cur

    def arg(self, a, dot, vars_):
        if a.startswith("(") and a.endswith(")"):
            return self.pipeline(a[1:-1], dot, vars_)
        if a.startswith('"'):
            return json.loads(a)
        if re.fullmatch(r"-?\d+", a):
            return int(a)
        if a in ("true", "false"):
            return a == "true"
        if a.startswith("$"):
            name, _, path = a.partition(".")
            if name not in vars_:
                raise TemplateError(f"undefined variable {name}")
            return self.lookup("." + path, vars_[name]) if path else vars_[name]
        if a.startswith("."):
            return self.lookup(a, dot)
        raise TemplateError(f"unsupported argument {a!r}")

    def call(self, cmd, dot, vars_, piped=None, has_piped=False):
        words = split_args(cmd)
        name, raw = words[0], words[1:]
        fns = {
            "quote": lambda s: json.dumps("" if s is None else str(s)),
            "default": lambda d, v=None: v if truthy(v) else d,
            "toYaml": to_yaml,
            "nindent": lambda n, s: "\n" + "\n".join(" " * n + l if l else l for l in str(s).split("\n")),
            "indent": lambda n, s: "\n".join(" " * n + l if l else l for l in str(s).split("\n")),
            "printf": go_printf,
            "trunc": lambda n, s: str(s)[:n],
            "trimSuffix": lambda suf, s: str(s)[: -len(suf)] if suf and str(s).endswith(suf) else str(s),
            "b64enc": lambda s: base64.b64encode(str(s).encode()).decode(),
            "not": lambda v: not truthy(v),
            "and": lambda *v: all(truthy(x) for x in v),
            "or": lambda *v: any(truthy(x) for x in v),
            "eq": lambda a, b: a == b,
            "include": lambda n, d: self.include(n, d),
        }
        if name in fns:
            args = [self.arg(a, dot, vars_) for a in raw]
            if has_piped:
                args.append(piped)
            return fns[name](*args)
        if raw or has_piped:
            raise TemplateError(f"unknown function {name!r}")
        return self.arg(name, dot, vars_)

    def pipeline(self, expr, dot, vars_):
        parts = split_pipeline(expr)
        v = self.call(parts[0], dot, vars_)
        for p in parts[1:]:
            v = self.call(p, dot, vars_, v, True)
        return v

    def include(self, name, dot):
        if name not in self.defines:
            raise TemplateError(f"no template {name!r}")
        return self.render(self.defines[name], dot, {"$": self.root})

    def collect_defines(self, nodes):
        for n in nodes:
            if n[0] == "define":
                self.defines[n[1]] = n[2]

    def render(self, nodes, dot, vars_):
        out = []
        for n in nodes:
            kind = n[0]
            if kind == "text":
                out.append(n[1])
            elif kind == "action":
                v = self.pipeline(n[1], dot, vars_)
                out.append("" if v is None else (str(v).lower() if isinstance(v, bool) else str(v)))
            elif kind == "if":
                for cond, body in n[1]:
                    if cond is None or truthy(self.pipeline(cond, dot, vars_)):
                        out.append(self.render(body, dot, vars_))
                        break
            elif kind == "range":
                coll = self.pipeline(n[3], dot, vars_) or {}
                items = sorted(coll.items()) if isinstance(coll, dict) else list(enumerate(coll))
                for k, v in items:
                    out.append(self.render(n[4], dot, {**vars_, n[1]: k, n[2]: v}))
            elif kind == "define":
                pass
        return "".join(out)


def set_value(values, path, raw):
    keys = path.split(".")
    cur = values
    for k in keys[:-1]:
        cur = cur.setdefault(k, {})
    cur[keys[-1]] = yaml.safe_load(raw) if raw not in ("",) else ""


def render_chart(chart_dir, sets, release="release"):
    chart = yaml.safe_load(open(os.path.join(chart_dir, "Chart.yaml")))
    values = yaml.safe_load(open(os.path.join(chart_dir, "values.yaml"))) or {}
    for s in sets:
        k, _, v = s.partition("=")
        set_value(values, k, v)
    root = {
        "Values": values,
        "Release": {"Name": release, "Namespace": "default", "Service": "Helm"},
        "Chart": {"Name": chart["name"], "Version": chart["version"], "AppVersion": chart.get("appVersion", "")},
    }
    r = Renderer(root)
    tdir = os.path.join(chart_dir, "templates")
    parsed = {}
    for f in sorted(os.listdir(tdir)):
        if f.endswith((".yaml", ".yml", ".tpl")):
            nodes, _, _ = parse(tokenize(open(os.path.join(tdir, f)).read()))
            parsed[f] = nodes
            r.collect_defines(nodes)
    docs = []
    for f, nodes in parsed.items():
        if f.startswith("_") or f.endswith(".tpl"):
            continue
        text = r.render(nodes, root, {"$": root})
        for doc in re.split(r"(?m)^---\s*$", text):
            if doc.strip():
                docs.append((f"{os.path.basename(chart_dir)}/templates/{f}", doc.strip("\n")))
    return docs


def main(argv):
    args = argv[1:]
    as_json = "--json" in args
    args = [a for a in args if a != "--json"]
    sets = []
    chart = None
    while args:
        a = args.pop(0)
        if a == "--set":
            sets.append(args.pop(0))
        else:
            chart = a
    if not chart:
        print(__doc__, file=sys.stderr)
        return 2
    docs = render_chart(chart, sets)
    if as_json:
        parsed = []
        for src, d in docs:
            try:
                parsed.append({"source": src, "manifest": yaml.safe_load(d)})
            except yaml.YAMLError as e:
                print(f"{src} does not render to valid YAML: {e}\n{d}", file=sys.stderr)
                return 1
        print(json.dumps(parsed))
    else:
        for src, d in docs:
            print(f"---\n# Source: {src}\n{d}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv))
    except TemplateError as e:
        print(f"template error: {e}", file=sys.stderr)
        sys.exit(1)
