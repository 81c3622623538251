"""Converters from public dataset formats to nnU-Net v2 raw format (``nnUNet_raw/DatasetXXX_Name``).

* :mod:`nnunet_mona.conversion.acdc_h5`: ACDC in the SSL4MIS/MONA h5 format
  (``nnUNetv2_mona_convert_acdc_h5``).
* :mod:`nnunet_mona.conversion.acdc_official`: the official ACDC release (NIfTI + Info.cfg)
  (``nnUNetv2_mona_convert_acdc``).
* :mod:`nnunet_mona.conversion.common`: what both share (labels, case naming, patient grouping,
  labeled-patient lists, split files, dataset.json, output folder handling).
"""
