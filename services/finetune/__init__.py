"""The fine-tune job: a LoRA adapter trained on an app's well-rated (or corrected) traffic.

:mod:`.dataset` builds the training set with SQL from ClickHouse and cleans it (duplicates,
near duplicates by embedding, toxic or injected examples); :mod:`.lora` trains and evaluates
a PEFT LoRA adapter; :mod:`.job` runs the whole job for one ``fine_tune`` action. torch and
peft are imported only when training starts.
"""

from undertow.services.finetune.dataset import (
    ActionParameters,
    Cleaned,
    CleanSpec,
    DatasetError,
    Example,
    FineTuneError,
    FineTuneQuery,
    InvalidParameter,
    NotEnoughExamples,
    ScoreFlags,
    SplitSpec,
    build_query,
    clean,
    fetch_examples,
    split,
)
from undertow.services.finetune.job import (
    BaseModel,
    FineTuneParams,
    FineTuneResult,
    local_base_loader,
    run_fine_tune,
)
from undertow.services.finetune.lora import (
    LoraSpec,
    TrainingError,
    TrainResult,
    heldout_loss,
    save_if_improved,
    train_adapter,
)

__all__ = [
    "ActionParameters",
    "BaseModel",
    "CleanSpec",
    "Cleaned",
    "DatasetError",
    "Example",
    "FineTuneError",
    "FineTuneParams",
    "FineTuneQuery",
    "FineTuneResult",
    "InvalidParameter",
    "LoraSpec",
    "NotEnoughExamples",
    "ScoreFlags",
    "SplitSpec",
    "TrainResult",
    "TrainingError",
    "build_query",
    "clean",
    "fetch_examples",
    "heldout_loss",
    "local_base_loader",
    "run_fine_tune",
    "save_if_improved",
    "split",
    "train_adapter",
]
