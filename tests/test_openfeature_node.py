"""The Node OpenFeature SDK with @openfeature/flagd-provider (RPC and in-process mode) against a
real ``platform-admin serve``: the same answers as EvaluateFlag / ResolveConfig.

The Node packages come from tests/node/package.json (``make node-deps``); without them, or
without node, this module is skipped. The Node flagd provider has no way to attach a token
(README "OpenFeature"), so the server runs with authentication off on loopback. The provider
calls flagd.evaluation.v1 in RPC mode, whose answers have no optional value: an archived flag
is reason DISABLED with value false.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.grpcurl_server import start_server, stop_server
from tests.openfeature_helpers import CONFIG_TYPES, FLAGS, NODE, TENANTS, Truth, seed

NODE_DIR = Path(__file__).parent / "node"
NODE_TYPES = {bool: "boolean", int: "number", str: "string"}
FALLBACKS = {bool: True, int: -1, str: "code-default"}

pytestmark = pytest.mark.skipif(
    shutil.which("node") is None or not (NODE_DIR / "node_modules").is_dir(),
    reason="Node packages not installed: run `make node-deps`",
)


@pytest.mark.parametrize("mode", ["rpc", "in-process"])
def test_node_provider_answers_like_evaluate_flag_and_resolve_config(db_url, tmp_path, mode):
    server = start_server(db_url, tmp_path)
    truth = None
    try:
        seed(server)
        truth = Truth(server)
        questions, expected = [], []
        for tenant in TENANTS[:6]:
            for node in (None, NODE):
                context = {"targetingKey": tenant, **({"nodeId": node} if node else {})}
                for key in FLAGS:
                    questions.append(
                        {"key": key, "type": "boolean", "fallback": True, "context": context}
                    )
                    expected.append(truth.flag(key, tenant))
                for name, kind in CONFIG_TYPES.items():
                    questions.append(
                        {
                            "key": f"config:{name}",
                            "type": NODE_TYPES[kind],
                            "fallback": FALLBACKS[kind],
                            "context": context,
                        }
                    )
                    expected.append(truth.config(name, tenant, node))
        questions_file = tmp_path / "questions.json"
        questions_file.write_text(json.dumps(questions))
        host, port = server.address.rsplit(":", 1)
        done = subprocess.run(
            ["node", "evaluate.mjs", mode, host, port, str(questions_file)],
            cwd=NODE_DIR,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        answers = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
        assert len(answers) == len(questions)
        for answer, want in zip(answers, expected, strict=True):
            if want.value is None:  # archived
                if mode == "in-process":
                    # The Node engine reports a DISABLED flag as FLAG_NOT_FOUND.
                    assert answer["errorCode"] == "FLAG_NOT_FOUND", answer
                    assert answer["value"] is True, answer
                else:
                    # v1 has no optional value: false (EvaluateFlag's answer), reason DISABLED.
                    assert (answer["reason"], answer["errorCode"]) == ("DISABLED", None), answer
                    assert answer["value"] is False, answer
                continue
            assert answer["errorCode"] is None, answer
            assert (answer["value"], answer["reason"]) == (want.value, want.reason), (answer, want)
    finally:
        if truth is not None:
            truth.close()
        stop_server(server)
