"""The one mechanism that puts a trainer's extra modules (memory banks, queues, EMA heads, alignment shares) into
checkpoint['semi_supervised']: ``checkpointed_modules`` merged along the class hierarchy."""
from nnunet_mona.trainers import (nnUNetTrainerACTION, nnUNetTrainerACTIONPretrain, nnUNetTrainerMeanTeacher,
                                  nnUNetTrainerMixCLPretrain, nnUNetTrainerMONA)

BASE = {"auxiliary_modules", "distribution_alignment", "adaptive_threshold"}


def test_every_trainer_checkpoints_the_base_modules_and_its_own():
    assert set(nnUNetTrainerMeanTeacher.checkpointed_module_names()) == BASE
    assert nnUNetTrainerMONA.checkpointed_module_names()["mona"] == "mona_state"
    assert nnUNetTrainerACTION.checkpointed_module_names()["mona"] == "mona_state"  # inherited from MONA
    assert set(nnUNetTrainerACTION.checkpointed_module_names()) == BASE | {"mona"}
    assert set(nnUNetTrainerMixCLPretrain.checkpointed_module_names()) == BASE | {"mixcl_state"}
    assert set(nnUNetTrainerACTIONPretrain.checkpointed_module_names()) == BASE | {"relational"}


def test_a_subclass_entry_adds_to_its_parents():
    class WithQueue(nnUNetTrainerMONA):
        checkpointed_modules = {"queue": "my_queue"}
    names = WithQueue.checkpointed_module_names()
    assert names["queue"] == "my_queue" and names["mona"] == "mona_state" and BASE <= set(names)
