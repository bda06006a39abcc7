#!/usr/bin/env python3
"""promlint.py FILE - checks a Prometheus text exposition (version 0.0.4) the
way `promtool check metrics` does, without promtool (Debian's `prometheus`
package, which ships it, is a 96 MB server that starts itself on install).

Two layers:
  1. the format, line by line (names, labels, escapes, values, HELP/TYPE
     placement, one family per name, no duplicate series, histogram
     buckets cumulative and ending in +Inf == _count), then a parse by the
     reference Python client's parser (python3-prometheus-client);
  2. promtool's lint rules (client_golang's promlint): HELP on every family,
     counters end in _total and nothing else does, no camelCase, no ':' in
     names, no abbreviated or non-base units, no type name in the name,
     _bucket/_sum/_count and le/quantile only where they belong.
Prints one line per problem and exits 1 when there is any; 0 and "ok N
families" otherwise."""
import math
import re
import sys

NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*$")
LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*$")
TYPES = {"counter", "gauge", "histogram", "summary", "untyped"}
# promlint's lists (client_golang/prometheus/testutil/promlint)
UNIT_ABBREV = ["s", "ms", "us", "ns", "sec", "b", "kb", "mb", "gb", "tb", "pb", "m", "h", "d"]
NON_BASE = {"minutes": "seconds", "hours": "seconds", "days": "seconds",
            "milliseconds": "seconds", "microseconds": "seconds", "nanoseconds": "seconds",
            "kilobytes": "bytes", "megabytes": "bytes", "gigabytes": "bytes",
            "terabytes": "bytes", "petabytes": "bytes", "bits": "bytes",
            "fahrenheit": "celsius"}


def parse_labels(s, where, errs):
    """'a="x",b="y"' -> list of (name, value); escapes \\\\ \\" \\n only."""
    out, i = [], 0
    while i < len(s):
        m = re.match(r"\s*([^=\s]+)\s*=\s*\"", s[i:])
        if not m:
            errs.append(f"{where}: bad label list {s!r}")
            return out
        name = m.group(1)
        if not LABEL.match(name) or name.startswith("__"):
            errs.append(f"{where}: bad label name {name!r}")
        i += m.end()
        val = []
        while True:
            if i >= len(s):
                errs.append(f"{where}: unterminated label value")
                return out
            c = s[i]
            if c == "\\":
                if i + 1 >= len(s) or s[i + 1] not in '\\"n':
                    errs.append(f"{where}: bad escape in label value")
                    return out
                val.append({"\\": "\\", '"': '"', "n": "\n"}[s[i + 1]])
                i += 2
                continue
            if c == '"':
                i += 1
                break
            if c == "\n":
                errs.append(f"{where}: newline in label value")
            val.append(c)
            i += 1
        out.append((name, "".join(val)))
        m = re.match(r"\s*,?\s*", s[i:])
        i += m.end()
    names = [n for n, _ in out]
    if len(set(names)) != len(names):
        errs.append(f"{where}: duplicate label name")
    return out


def family_of(name, types):
    for suf in ("_bucket", "_sum", "_count"):
        base = name[: -len(suf)]
        if name.endswith(suf) and types.get(base) in ("histogram", "summary"):
            return base
    return name


def lint_name(fam, typ, help_, errs):
    w = f"{fam}"
    if help_ is None or not help_.strip():
        errs.append(f"{w}: no help text")
    if typ is None:
        errs.append(f"{w}: no TYPE line")
    if typ == "counter" and not fam.endswith("_total"):
        errs.append(f'{w}: counter metrics should have "_total" suffix')
    if typ != "counter" and fam.endswith("_total"):
        errs.append(f'{w}: non-counter metrics should not have "_total" suffix')
    if ":" in fam:
        errs.append(f"{w}: metric names should not contain ':'")
    if re.search(r"[a-z][A-Z]", fam):
        errs.append(f"{w}: metric names should be written in 'snake_case' not 'camelCase'")
    parts = fam.split("_")
    for p in parts:
        if p in UNIT_ABBREV:
            errs.append(f"{w}: metric names should not contain abbreviated units ({p})")
        if p in NON_BASE:
            errs.append(f"{w}: use base unit {NON_BASE[p]!r} instead of {p!r}")
    for t in ("counter", "gauge", "histogram", "summary", "untyped"):
        if t in parts:
            errs.append(f"{w}: metric name should not include type '{t}'")
    if typ not in ("histogram", "summary"):
        for suf in ("_bucket", "_count", "_sum"):
            if fam.endswith(suf):
                errs.append(f'{w}: non-histogram and non-summary metrics should not have "{suf}" suffix')


def check(text):
    errs = []
    if text and not text.endswith("\n"):
        errs.append("exposition does not end with a newline")
    types, helps = {}, {}
    seen_samples = set()  # families that already had samples
    closed = set()  # families whose block ended
    current = None
    series = set()
    hist = {}  # (family, labels without le) -> {"buckets": [(le, v)], "count": v, "sum": v}
    for ln, line in enumerate(text.split("\n")[:-1] if text.endswith("\n") else text.split("\n"), 1):
        where = f"line {ln}"
        if line == "":
            continue
        if line.startswith("#"):
            m = re.match(r"#\s+(HELP|TYPE)\s+(\S+)(?:\s(.*))?$", line)
            if not m:
                continue  # a plain comment
            kind, name, rest = m.group(1), m.group(2), m.group(3)
            if not NAME.match(name):
                errs.append(f"{where}: bad metric name {name!r}")
            if name in closed or (name != current and name in seen_samples):
                errs.append(f"{where}: {kind} for {name} after its samples ended")
            if kind == "TYPE":
                if name in types:
                    errs.append(f"{where}: second TYPE line for {name}")
                if name in seen_samples:
                    errs.append(f"{where}: TYPE for {name} after its samples")
                if (rest or "").strip() not in TYPES:
                    errs.append(f"{where}: unknown type {rest!r}")
                types[name] = (rest or "").strip()
            else:
                if name in helps:
                    errs.append(f"{where}: second HELP line for {name}")
                helps[name] = rest or ""
            if current is not None and name != current:
                closed.add(current)
            current = name
            continue
        m = re.match(r"([^{\s]+)(\{(.*)\})?\s+(\S+)(?:\s+(-?\d+))?$", line)
        if not m:
            errs.append(f"{where}: not a sample line: {line!r}")
            continue
        name, labels_s, value_s = m.group(1), m.group(3), m.group(4)
        if not NAME.match(name):
            errs.append(f"{where}: bad metric name {name!r}")
        labels = parse_labels(labels_s, where, errs) if labels_s else []
        try:
            value = float(value_s)
        except ValueError:
            errs.append(f"{where}: bad value {value_s!r}")
            continue
        fam = family_of(name, types)
        if fam in closed:
            errs.append(f"{where}: samples of {fam} are not together")
        if current is not None and fam != current:
            closed.add(current)
        current = fam
        seen_samples.add(fam)
        key = (name, tuple(sorted(labels)))
        if key in series:
            errs.append(f"{where}: duplicate series {line!r}")
        series.add(key)
        typ = types.get(fam)
        lnames = [n for n, _ in labels]
        if "le" in lnames and not (typ == "histogram" and name.endswith("_bucket")):
            errs.append(f"{where}: label 'le' outside a histogram's _bucket")
        if "quantile" in lnames and typ != "summary":
            errs.append(f"{where}: label 'quantile' outside a summary")
        if typ == "counter" and (value < 0 or math.isnan(value)):
            errs.append(f"{where}: counter {name} is {value}")
        if typ == "histogram":
            rest = tuple(sorted((n, v) for n, v in labels if n != "le"))
            h = hist.setdefault((fam, rest), {"buckets": [], "count": None, "sum": None})
            if name.endswith("_bucket"):
                le = dict(labels).get("le")
                if le is None:
                    errs.append(f"{where}: _bucket without le")
                else:
                    try:
                        h["buckets"].append((float(le), value))
                    except ValueError:
                        errs.append(f"{where}: bad le {le!r}")
            elif name.endswith("_count"):
                h["count"] = value
            elif name.endswith("_sum"):
                h["sum"] = value
            else:
                errs.append(f"{where}: {name} is not a histogram series of {fam}")
    for (fam, rest), h in hist.items():
        b = h["buckets"]
        w = f"{fam}{dict(rest)}"
        if not b or b[-1][0] != math.inf:
            errs.append(f"{w}: no +Inf bucket last")
        if any(b[i][0] >= b[i + 1][0] for i in range(len(b) - 1)):
            errs.append(f"{w}: le bounds not increasing")
        if any(b[i][1] > b[i + 1][1] for i in range(len(b) - 1)):
            errs.append(f"{w}: buckets not cumulative")
        if h["count"] is None or h["sum"] is None:
            errs.append(f"{w}: _count or _sum missing")
        elif b and b[-1][1] != h["count"]:
            errs.append(f"{w}: +Inf bucket {b[-1][1]} != _count {h['count']}")
    fams = set(types) | set(helps) | seen_samples
    for fam in sorted(fams):
        lint_name(fam, types.get(fam), helps.get(fam), errs)
    # the reference parser must read it too
    try:
        from prometheus_client.parser import text_string_to_metric_families
        n = sum(1 for _ in text_string_to_metric_families(text))
        if n != len(fams):
            errs.append(f"prometheus_client read {n} families, this checker {len(fams)}")
    except ImportError:
        errs.append("python3-prometheus-client is missing (tools/dev deps installs it)")
    except Exception as e:  # the parser's own complaint
        errs.append(f"prometheus_client parser: {e}")
    return errs, len(fams)


def main():
    if len(sys.argv) != 2:
        print(__doc__.strip().split("\n")[0], file=sys.stderr)
        return 2
    with open(sys.argv[1], encoding="utf-8") as f:
        text = f.read()
    errs, n = check(text)
    for e in errs:
        print(e)
    if not errs:
        print(f"ok {n} families")
    return 1 if errs else 0


if __name__ == "__main__":
    sys.exit(main())
