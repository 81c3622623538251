"""In-plane downsampling of the ACDC converters (--downsample): values, ties, spacing, bad factors."""
import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_mona.conversion.downsample import block_majority, block_mean, check_factor, downsample_sitk


def test_block_mean_averages_each_block_and_pads_odd_sizes_by_the_edge():
    img = np.arange(2 * 4 * 5, dtype=np.float32).reshape(2, 4, 5)
    out = block_mean(img, 2)
    assert out.shape == (2, 2, 3)
    assert out[0, 0, 0] == pytest.approx(np.mean([0, 1, 5, 6]))
    # last column: edge padding repeats column 4
    assert out[1, 1, 2] == pytest.approx(np.mean([34, 34, 39, 39]))
    np.testing.assert_array_equal(block_mean(img, 1), img)


def test_block_majority_prefers_the_most_frequent_then_the_higher_label():
    lab = np.array([[[0, 0, 2, 1],
                     [0, 2, 2, 1],
                     [3, 3, 0, 0],
                     [0, 0, 1, 2]]], dtype=np.uint8)
    out = block_majority(lab, 2)
    # blocks: [0,0,0,2] -> 0; [2,1,2,1] tie 1/2 -> 2; [3,3,0,0] tie 0/3 -> 3; [0,0,1,2] -> 0
    np.testing.assert_array_equal(out, [[[0, 2], [3, 0]]])
    assert out.dtype == np.uint8


def test_thin_structure_survives_majority_ties():
    # a 2-pixel-wide myocardium ring (label 2) between background and cavity keeps its pixels at factor 2
    lab = np.zeros((1, 8, 8), np.uint8)
    lab[0, :, 2:4] = 2
    assert (block_majority(lab, 2) == 2).sum() == 4


def test_downsample_sitk_scales_in_plane_spacing_only():
    img = sitk.GetImageFromArray(np.random.rand(3, 6, 8).astype(np.float32))
    img.SetSpacing((1.0, 1.5, 10.0))
    lab = sitk.GetImageFromArray(np.zeros((3, 6, 8), np.uint8))
    lab.CopyInformation(img)
    a, b = downsample_sitk(img, lab, 2)
    assert a.GetSize() == (4, 3, 3) and b.GetSize() == (4, 3, 3)
    assert a.GetSpacing() == pytest.approx((2.0, 3.0, 10.0)) and b.GetSpacing() == a.GetSpacing()


@pytest.mark.parametrize("bad", [0, -2, 1.5, "two", None])
def test_bad_factor_is_refused_with_the_fix(bad):
    with pytest.raises(ValueError, match="positive integer"):
        check_factor(bad)
    assert check_factor("2") == 2
