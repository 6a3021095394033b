"""What the demo trains on and for how long."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

DEMO_SUFFIX = "_demo"
TRAINER_FOLDER = Path(__file__).parent / "trainers"
DEFAULT_TRAINERS = ("nnUNetTrainer", "nnUNetTrainerBlobDice")


@dataclass(frozen=True)
class Budget:
    """Dataset size and training length of one demo run."""

    num_train: int
    num_test: int
    shape: tuple
    small_objects: tuple
    epochs: int
    iterations: int
    val_iterations: int
    base_features: int | None  # reduced network (features of the first stage); None: nnU-Net's own plans

    def environment(self, seed: int) -> dict:
        return {"NNUNET_BLOB_EPOCHS": str(self.epochs), "NNUNET_BLOB_ITERATIONS": str(self.iterations),
                "NNUNET_BLOB_VAL_ITERATIONS": str(self.val_iterations), "NNUNET_BLOB_SEED": str(seed)}

    def describe(self) -> dict:
        return asdict(self)


BUDGETS = {
    # CI: checks the whole pipeline, numbers are meaningless
    "smoke": Budget(num_train=5, num_test=3, shape=(32, 32, 32), small_objects=(6, 10), epochs=1, iterations=2,
                    val_iterations=1, base_features=4),
    # <= 15 minutes on a 2-core CPU for two trainers
    "default": Budget(num_train=16, num_test=10, shape=(48, 48, 48), small_objects=(10, 20), epochs=12,
                      iterations=25, val_iterations=5, base_features=8),
    # benchmarks/bench_detection.py: more test cases for the paired comparison, longer training
    "detection": Budget(num_train=20, num_test=24, shape=(48, 48, 48), small_objects=(10, 20), epochs=25,
                        iterations=25, val_iterations=5, base_features=8),
    # a GPU, or a long afternoon on a CPU
    "long": Budget(num_train=40, num_test=20, shape=(64, 64, 64), small_objects=(15, 30), epochs=100,
                   iterations=100, val_iterations=20, base_features=None),
}


def demo_trainer_bases() -> dict:
    """Trainers the demo can run, by name: stock ``nnUNetTrainer`` and every trainer of nnunet_blob."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnunet_blob.trainers import variants

    bases = {"nnUNetTrainer": nnUNetTrainer}
    for name in dir(variants):
        value = getattr(variants, name)
        if name.startswith("nnUNetTrainer") and isinstance(value, type) and issubclass(value, nnUNetTrainer):
            bases[name] = value
    return bases
