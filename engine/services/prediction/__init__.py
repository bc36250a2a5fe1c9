"""Prediction: conversion propensity (``propensity``, features in ``features``, the
stored model in ``model``) and the pipeline forecast (``forecast``)."""
