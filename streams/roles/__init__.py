"""One module per worker role: the processor (pure, tested without a broker) and ``add``,
which wires it to the stream runtime (:mod:`undertow.streams.runtime`). Nothing here imports
Faust: a role asks the runtime for ordered batches, keyed state, timers and producers."""
