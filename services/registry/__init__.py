"""The model and prompt registry: versions and labels in the compacted topic
``undertow.registry.v1``, folded into a state by every reader.

* :mod:`.state`: the pure state and the records each change writes (promote, rollback, labels,
  A/B tests, sticky variant assignment);
* :mod:`.client`: reading, publishing and following the topic, and a cached loader;
* :mod:`.mirror`: the registry's mirror into the ClickHouse ``registry`` table.
"""
