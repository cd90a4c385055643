"""LLM-as-judge: rubric prompts, a judge model client and robust parsing of its verdicts.

* :mod:`.rubrics`: versioned rubric templates (``rubrics.yaml`` ships ``relevance``,
  ``coherence`` and ``groundedness``) and the messages they render for one completion;
* :mod:`.parse`: a judge's free-text or JSON reply to a score on the rubric's scale, or a
  parse failure with the reason (never a guessed score);
* :mod:`.client`: an async OpenAI-compatible chat client (vLLM in production, Undertow's own
  gateway offline) with timeouts and retries.

:mod:`undertow.streams.judge_processor` samples completions, joins them with their prompt and
retrieved documents and turns verdicts into ``judge_scores`` rows and feedback events.
"""

from undertow.errors import UndertowError


class JudgeError(UndertowError):
    """Root of the judge's errors: rubrics, judge server replies."""


from undertow.streams.judge.client import (  # noqa: E402  (JudgeError must exist first)
    JudgeClient,
    JudgeClientConfig,
    JudgeRefused,
    JudgeReply,
    JudgeUnavailable,
)
from undertow.streams.judge.parse import Verdict, parse_verdict  # noqa: E402
from undertow.streams.judge.rubrics import (  # noqa: E402
    JudgeInputs,
    Rubric,
    RubricError,
    RubricSet,
    load_rubrics,
)

__all__ = [
    "JudgeClient",
    "JudgeClientConfig",
    "JudgeError",
    "JudgeInputs",
    "JudgeRefused",
    "JudgeReply",
    "JudgeUnavailable",
    "Rubric",
    "RubricError",
    "RubricSet",
    "Verdict",
    "load_rubrics",
    "parse_verdict",
]
