"""LLM-as-judge: rubric prompts and robust parsing of a judge model's verdicts.

* :mod:`.rubrics`: versioned rubric templates (``rubrics.yaml`` ships ``relevance``,
  ``coherence`` and ``groundedness``) and the messages they render for one completion;
* :mod:`.parse`: a judge's free-text or JSON reply to a score on the rubric's scale, or a
  parse failure with the reason (never a guessed score).

The client that asks a judge model (an async OpenAI-compatible chat client, vLLM in
production, Undertow's own gateway offline) is :mod:`undertow.services.judge_client`: this
package is pure, and imports no HTTP client.

:mod:`undertow.streams.roles.judge` samples completions, joins them with their prompt and
retrieved documents and turns verdicts into ``judge_scores`` rows and feedback events.
"""

from undertow.errors import UndertowError


class JudgeError(UndertowError):
    """Root of the judge's errors: rubrics, judge server replies."""


from undertow.streams.judge.parse import Verdict, parse_verdict  # noqa: E402
from undertow.streams.judge.rubrics import (  # noqa: E402
    JudgeInputs,
    Rubric,
    RubricError,
    RubricSet,
    load_rubrics,
)

__all__ = [
    "JudgeError",
    "JudgeInputs",
    "Rubric",
    "RubricError",
    "RubricSet",
    "Verdict",
    "load_rubrics",
    "parse_verdict",
]
