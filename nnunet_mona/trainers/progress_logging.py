"""nnU-Net's LocalLogger with one extra key per semi-supervised loss term, drawn in progress.png."""
from typing import Sequence

import matplotlib

matplotlib.use("agg")
import matplotlib.pyplot as plt  # noqa: E402
from batchgenerators.utilities.file_and_folder_operations import join  # noqa: E402
from nnunetv2.training.logging.nnunet_logger import LocalLogger  # noqa: E402

TERM_PREFIX = "train_"


def term_key(name: str) -> str:
    """Logger key of a loss term, e.g. 'unsup' -> 'train_unsup'."""
    return TERM_PREFIX + name


class SemiSupervisedLocalLogger(LocalLogger):
    """Keeps every loss term (one value per epoch) next to nnU-Net's keys.

    ``my_fantastic_logging`` is saved in ``checkpoint['logging']`` by nnU-Net and restored on
    ``--c``, so the extra curves survive a resume.
    """

    def __init__(self, term_names: Sequence[str], verbose: bool = False):
        super().__init__(verbose)
        self.term_names = list(term_names)
        self.ensure_term_keys()

    def ensure_term_keys(self) -> None:
        for name in self.term_names:
            self.my_fantastic_logging.setdefault(term_key(name), [])

    def load_checkpoint(self, checkpoint: dict):
        super().load_checkpoint(checkpoint)
        self.ensure_term_keys()  # a checkpoint of another trainer may lack our keys

    def plot_progress_png(self, output_folder):
        log = self.my_fantastic_logging
        epoch = min(len(v) for v in log.values()) - 1
        if epoch < 0:
            return
        x = list(range(epoch + 1))
        fig, axes = plt.subplots(4, 1, figsize=(14, 22))

        ax = axes[0]
        ax2 = ax.twinx()
        ax.plot(x, log["train_losses"][:epoch + 1], color="b", label="loss_tr (total)", linewidth=2)
        ax.plot(x, log["val_losses"][:epoch + 1], color="r", label="loss_val", linewidth=2)
        ax2.plot(x, log["mean_fg_dice"][:epoch + 1], color="g", ls="dotted", label="pseudo dice", linewidth=2)
        ax2.plot(x, log["ema_fg_dice"][:epoch + 1], color="g", label="pseudo dice (mov. avg.)", linewidth=2)
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        ax2.set_ylabel("pseudo dice")
        ax.legend(loc=(0, 1))
        ax2.legend(loc=(0.3, 1))

        ax = axes[1]
        for name in self.term_names:
            ax.plot(x, log[term_key(name)][:epoch + 1], label=name, linewidth=2)
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss term (unweighted)")
        ax.legend(loc=(0, 1), ncol=max(1, len(self.term_names)))

        ax = axes[2]
        durations = [e - s for e, s in zip(log["epoch_end_timestamps"][:epoch + 1],
                                           log["epoch_start_timestamps"][:epoch + 1])]
        ax.plot(x, durations, color="b", label="epoch duration", linewidth=2)
        ax.set(ylim=[0, max(durations + [1e-3]) * 1.1])
        ax.set_xlabel("epoch")
        ax.set_ylabel("time [s]")
        ax.legend(loc=(0, 1))

        ax = axes[3]
        ax.plot(x, log["lrs"][:epoch + 1], color="b", label="learning rate", linewidth=2)
        ax.set_xlabel("epoch")
        ax.set_ylabel("learning rate")
        ax.legend(loc=(0, 1))

        plt.tight_layout()
        fig.savefig(join(output_folder, "progress.png"))
        plt.close(fig)
