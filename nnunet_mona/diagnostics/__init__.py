"""Measurements that explain a trained model rather than score it: how hard each loss term pulls on the network
(``gradient_shares``) and how well its features separate the classes (``class_separation``)."""
