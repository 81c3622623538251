"""Where nnunet_mona keeps unlabeled data, next to nnU-Net's own folders."""
import os

# raw unlabeled images: nnUNet_raw/DatasetXXX/imagesUnlabeled/<case>_<channel>.<file_ending>
RAW_UNLABELED_FOLDER = "imagesUnlabeled"
# preprocessed unlabeled images: a sibling of the labeled folder, never inside it
UNLABELED_SUFFIX = "_unlabeled"
# written into the unlabeled preprocessed folder; records which plans produced it (staleness check)
UNLABELED_MANIFEST = "mona_unlabeled_manifest.json"


def unlabeled_preprocessed_folder(preprocessed_dataset_folder: str, data_identifier: str) -> str:
    """``nnUNet_preprocessed/DatasetXXX/<data_identifier>_unlabeled``"""
    return os.path.join(preprocessed_dataset_folder, data_identifier + UNLABELED_SUFFIX)
