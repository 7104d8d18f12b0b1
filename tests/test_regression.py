"""CI's regression gate: a quick SmolLM2 run checked against the stored reference.

A change that silently makes any method worse (beyond 2% perplexity) fails here. After an
intended change, regenerate the reference (see leaderboards/ci/README.md) and say why in
the commit.
"""

from pathlib import Path

from conftest import SHARED_DATA, needs_smollm2

from harness.cli import main

ROOT = Path(__file__).resolve().parents[1]
CI = ROOT / "leaderboards" / "ci"

pytestmark = needs_smollm2()


def test_quick_smollm2_run_is_not_worse_than_the_stored_reference(tmp_path, capsys):
    out = tmp_path / "results"
    code = main(["run", "--config", str(ROOT / "experiments" / "ci-smollm2-quick.toml"), "--out", str(out),
                 "--data-dir", str(SHARED_DATA), "--cache-dir", str(tmp_path / "cache")])
    assert code == 0
    code = main(["check", str(out), "--against", str(CI / "smollm2-quick.json"), "--rtol", "0.02"])
    print(capsys.readouterr().out)
    assert code == 0
    # and the IntraSlice paper's claim at this matched ratio: it beats SliceGPT
    from harness.results import load_records

    ppl = {r.method: r.metrics["ppl:wikitext2"] for r in load_records(out)}
    assert ppl["intraslice"] < ppl["slicegpt"]
