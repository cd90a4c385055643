"""The stream runtime: the only code that knows Faust (faust-streaming, pinned; see
:mod:`.edge` and docs/faust.md).

* :mod:`.worker`: :class:`~.worker.Runtime`, the Faust app of one worker and what roles may
  ask of it (ordered batches, guarded timers, producers, tables); :func:`~.worker.run_worker`;
* :mod:`.intake`: the one admit / acknowledge / seek-back sequence every role's agent runs;
* :mod:`.keyed`: checkpointed keyed state (drift, policy);
* :mod:`.positions`: where each partition's next record must come from (pure bookkeeping);
* :mod:`.consumer` and :mod:`.seeks`: the workarounds on Faust's consumer, each restoring one
  invariant;
* :mod:`.edge`: the pinned versions, and the check that every attribute the workarounds
  replace exists with the expected shape before a worker starts.
"""
