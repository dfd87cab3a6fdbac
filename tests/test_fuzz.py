"""Schemathesis against the service's own OpenAPI (bounded): no 5xx, responses match the schema."""

import shutil
import subprocess
import sys
from pathlib import Path

from tests.servers import KEY_A, api_server, make_settings

# The coverage phase is left out: in schemathesis 4.32.5 it stops with an internal error (a hypothesis
# AST-recursion bug) on this schema. positive_data_acceptance is left out on purpose: the contract serves a FAILED job (e.g. cancelled,
# which the stateful phase does) as HTTP 422, which that check reads as "valid request rejected".
CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,"
          "negative_data_rejection,missing_required_header,unsupported_method,ignored_auth,use_after_free,"
          "ensure_resource_availability")


def test_openapi_fuzz_finds_no_server_errors(tmp_path, tiny_model_dir, inpainter):
    cli = shutil.which("schemathesis") or str(Path(sys.executable).parent / "schemathesis")
    # One unfinished job at a time (more get the documented 429), so a v1 call never waits behind the fuzzer's
    # queued jobs; its deadline is above the slowest single tiny-model job (100 steps x 4 samples at 768²).
    settings = make_settings(tmp_path, tiny_model_dir, rate_limit_per_second=0, max_queue_depth=1,
                             v1_timeout_seconds=25)
    with api_server(settings, lambda: inpainter) as srv:
        result = subprocess.run(
            [cli, "run", f"{srv.url}/openapi.json", "-H", f"x-api-key: {KEY_A}", "--checks", CHECKS,
             "--max-examples", "15", "--max-time", "60", "--workers", "2", "--seed", "1",
             "--request-timeout", "30", "--phases", "examples,fuzzing,stateful"],
            capture_output=True, text=True, timeout=240, cwd=tmp_path,
        )
    print(result.stdout[-6000:])
    summary = result.stdout[result.stdout.rfind("SUMMARY"):]
    assert result.returncode == 0, summary
    assert "passed" in summary
