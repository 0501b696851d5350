"""testcontainers-node and its Redis and PostgreSQL modules through sidewhale.

Runs each file of tests/node/test with Node's test runner (node --test)
against the session's server. tests/setup.sh installs the npm packages.
"""

import pathlib
import shutil
import subprocess



NODE_DIR = pathlib.Path(__file__).resolve().parents[1] / "node"


def run_node_suite(sidewhale, name):
    node = shutil.which("node")
    assert node, "node is not on PATH; run tests/setup.sh"
    assert (NODE_DIR / "node_modules" / "testcontainers").is_dir(), (
        f"{NODE_DIR}/node_modules is missing; run tests/setup.sh (npm ci in tests/node)"
    )
    result = subprocess.run(
        [node, "--test", f"test/{name}.test.js"],
        cwd=NODE_DIR,
        env=sidewhale.env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, (
        f"node --test test/{name}.test.js exited with {result.returncode}\n"
        f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    )
    return result.stdout


def test_node_generic_container(sidewhale):
    output = run_node_suite(sidewhale, "generic")
    assert "# pass 3" in output


def test_node_redis_module(sidewhale):
    output = run_node_suite(sidewhale, "redis")
    assert "# pass 2" in output


def test_node_postgres_module(sidewhale):
    output = run_node_suite(sidewhale, "postgres")
    assert "# pass 2" in output
