"""The verdict the coverage tests hold every model to: it prunes, or is refused clearly."""

from __future__ import annotations

from prunelab.graph.selfcheck import PruneCheck


def assert_prunes_or_is_refused(name: str, result: PruneCheck, refused: dict[str, str]) -> None:
    """A model in `refused` (model -> the op its refusal must name) gives one clear error;
    any other model passes every check `check_prunes` made."""
    if name in refused:
        assert result.refused is not None, f"{name} prunes now: take it out of REFUSED"
        msg = str(result.refused)
        assert msg.startswith("unsupported op") and refused[name] in msg, msg
        assert "\n" not in msg
    else:
        assert result.refused is None, str(result.refused)
        assert result.passed, result
