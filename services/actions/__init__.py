"""Action workers: they carry out the commands on ``undertow.actions.v1`` (rollback, promote,
fine-tune) and answer each with result records on the same topic.

* :mod:`.worker`: the worker interface and the table of workers by action type;
* :mod:`.release`: rollback and promote, on the model and prompt registry;
* :mod:`.finetune`: LoRA fine-tuning from warehouse data, registering a candidate;
* :mod:`.service`: the consumer loop (one consumer group per action type), idempotent by
  request id, running the registry's mirror into ClickHouse
  (:mod:`undertow.services.registry.mirror`);
* :mod:`.settings`: the frozen settings (``UNDERTOW_ACTIONS_*``).
"""
