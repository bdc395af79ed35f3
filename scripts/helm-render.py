#!/usr/bin/env python3
"""Renders and lints a Helm chart with Helm's own engine (the helm-python-sdk package binds
Helm's Go SDK; no helm binary, no cluster) for host/tests/helm_chart.rs.

    helm-render.py CHART [VALUES_JSON]

Prints one JSON object: {"manifests": {template path: rendered text}, "lint": {...}} or,
when rendering fails, {"error": "..."}. Exit 0 in both cases; 3 when helm_python is missing.
"""
import json
import sys

try:
    import helm_python as helm
except ImportError:
    print("helm_python missing: pip install helm-python-sdk", file=sys.stderr)
    sys.exit(3)


def main() -> int:
    chart_dir = sys.argv[1]
    values = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    out: dict = {}
    try:
        with helm.Chart.load(chart_dir) as chart:
            out["manifests"] = chart.render(
                values, name="mirror", namespace="registry", is_install=True
            )
        out["lint"] = helm.lint(chart_dir, values, strict=True, namespace="registry")
    except helm.HelmError as e:  # a template's fail, a malformed value
        out = {"error": str(e)}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
