"""Tests for cellrefine.device: device names, precisions per device, the torch thread limit."""

import threading

import pytest
import torch

from cellrefine import device as device_module
from cellrefine.device import (
    THREADS_ENV,
    autocast_dtype,
    cpu_bf16_supported,
    inference_dtypes,
    job_thread_count,
    limit_torch_threads,
    resolve_device,
)


@pytest.fixture
def no_gpu(monkeypatch):
    """A machine with neither CUDA nor MPS, whatever this one has."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(device_module, "_mps_works", lambda: False)


@pytest.fixture
def two_gpus(monkeypatch):
    """A machine with two CUDA GPUs (only names are resolved; nothing runs on them)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


@pytest.fixture
def bf16_gpu(monkeypatch, two_gpus):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)


@pytest.fixture
def fp16_gpu(monkeypatch, two_gpus):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)


@pytest.fixture
def threads_env(monkeypatch):
    monkeypatch.delenv(THREADS_ENV, raising=False)
    return monkeypatch


# ----------------------------------------------------------------------------- resolve_device


@pytest.mark.parametrize("name", ["auto", "Auto", "AUTO", " auto ", "cpu", "CPU", "Cpu", "cpu:0"])
def test_names_resolve_to_the_cpu_without_a_gpu(no_gpu, name):
    assert resolve_device(name).type == "cpu"


def test_default_is_auto(no_gpu):
    assert resolve_device() == torch.device("cpu")


@pytest.mark.parametrize(("name", "expected"), [("auto", "cuda"), ("cuda", "cuda"), ("CUDA", "cuda"), ("cuda:1", "cuda:1"), ("Cuda:0", "cuda:0")])
def test_auto_and_cuda_names_with_a_gpu(two_gpus, name, expected):
    assert resolve_device(name) == torch.device(expected)


def test_auto_prefers_cuda_over_mps(two_gpus, monkeypatch):
    monkeypatch.setattr(device_module, "_mps_works", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")


def test_auto_takes_a_working_mps_without_cuda(no_gpu, monkeypatch):
    monkeypatch.setattr(device_module, "_mps_works", lambda: True)
    assert resolve_device("auto") == torch.device("mps")
    assert resolve_device("MPS") == torch.device("mps")


def test_torch_devices_are_checked_too(two_gpus):
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert resolve_device(torch.device("cuda", 1)) == torch.device("cuda:1")
    with pytest.raises(ValueError, match="sees 2 CUDA GPU"):
        resolve_device(torch.device("cuda", 2))
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device(torch.device("meta"))


@pytest.mark.parametrize("name", ["gpu", "tpu", "xla:0", "", "cuda0", "c p u"])
def test_unknown_names_say_what_is_allowed(name):
    with pytest.raises(ValueError, match=r"unknown device .*use one of \('auto', 'cpu', 'cuda', 'mps'\)"):
        resolve_device(name)


@pytest.mark.parametrize("name", ["cuda:x", "cuda:", "cuda:-1", "auto:0", "cpu:one"])
def test_malformed_device_numbers(two_gpus, name):
    with pytest.raises(ValueError, match="is malformed"):
        resolve_device(name)


def test_gpu_number_beyond_the_gpus(two_gpus):
    with pytest.raises(ValueError, match=r"'cuda:2' was requested but PyTorch sees 2 CUDA GPU\(s\), numbered from 0"):
        resolve_device("cuda:2")


@pytest.mark.parametrize("name", ["cuda", "cuda:0", "CUDA:1"])
def test_cuda_without_a_gpu(no_gpu, name):
    with pytest.raises(ValueError, match="device='cuda' was requested but PyTorch sees no CUDA GPU"):
        resolve_device(name)


def test_mps_that_does_not_work(no_gpu):
    with pytest.raises(ValueError, match="Apple MPS is not usable here"):
        resolve_device("mps")


@pytest.mark.parametrize("value", [0, 1.5, None, ["cpu"], b"cpu"])
def test_device_of_wrong_type(value):
    with pytest.raises(TypeError, match=f"device must be a string .*got {type(value).__name__}"):
        resolve_device(value)


# ----------------------------------------------------------------------------- precisions


def test_autocast_dtypes(fp16_gpu):
    assert autocast_dtype(torch.device("cpu")) is None
    assert autocast_dtype("cpu") is None
    assert autocast_dtype(torch.device("mps")) is None
    assert autocast_dtype(torch.device("cuda")) is torch.float16


def test_autocast_bf16_where_the_gpu_has_it(bf16_gpu):
    assert autocast_dtype(torch.device("cuda")) is torch.bfloat16
    assert autocast_dtype("cuda:1") is torch.bfloat16


@pytest.mark.parametrize(("native", "expected"), [(True, torch.bfloat16), (False, torch.float32)])
def test_cpu_inference_dtypes(monkeypatch, native, expected):
    monkeypatch.setattr(device_module, "cpu_bf16_supported", lambda: native)
    cpu = torch.device("cpu")
    assert inference_dtypes(cpu) == (expected, None)
    assert inference_dtypes(cpu, "auto") == (expected, None)
    assert inference_dtypes("cpu", "auto") == (expected, None)
    assert inference_dtypes(cpu, "float32") == (torch.float32, None)
    assert inference_dtypes(cpu, "bfloat16") == (torch.bfloat16, None)  # even where emulated


def test_cuda_inference_dtypes(bf16_gpu):
    cuda = torch.device("cuda")
    assert inference_dtypes(cuda, "auto") == (torch.float32, torch.bfloat16)
    assert inference_dtypes(cuda, "bfloat16") == (torch.float32, torch.bfloat16)
    assert inference_dtypes(cuda, "float32") == (torch.float32, None)


def test_cuda_inference_dtypes_without_bf16(fp16_gpu):
    cuda = torch.device("cuda")
    assert inference_dtypes(cuda, "auto") == (torch.float32, torch.float16)
    assert inference_dtypes(cuda, "float32") == (torch.float32, None)
    with pytest.raises(ValueError, match="this GPU does not support bfloat16; use 'auto' or 'float32'"):
        inference_dtypes(cuda, "bfloat16")


def test_mps_inference_dtypes():
    mps = torch.device("mps")
    assert inference_dtypes(mps, "auto") == (torch.float32, None)
    assert inference_dtypes(mps, "float32") == (torch.float32, None)
    assert inference_dtypes(mps, "bfloat16") == (torch.float32, torch.bfloat16)


@pytest.mark.parametrize("precision", ["fp16", "float16", "BF16", "", None])
def test_unknown_precision(precision):
    with pytest.raises(ValueError, match=r"precision must be one of \('auto', 'float32', 'bfloat16'\)"):
        inference_dtypes(torch.device("cpu"), precision)


def test_names_are_resolved_before_choosing_dtypes(no_gpu):
    with pytest.raises(ValueError, match="no CUDA GPU"):
        inference_dtypes("cuda")
    with pytest.raises(ValueError, match="unknown device"):
        autocast_dtype("gpu")


def test_cpu_bf16_supported_is_a_cached_bool(monkeypatch):
    answer = cpu_bf16_supported()
    assert type(answer) is bool
    assert cpu_bf16_supported() is answer
    cpu_bf16_supported.cache_clear()
    try:
        monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
        assert cpu_bf16_supported() is False
    finally:
        monkeypatch.undo()
        cpu_bf16_supported.cache_clear()
    assert cpu_bf16_supported() is answer


# ----------------------------------------------------------------------------- threads


def test_job_thread_count_default_leaves_a_core(threads_env, monkeypatch):
    monkeypatch.setattr(device_module.os, "cpu_count", lambda: 8)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)
    assert job_thread_count() == 7
    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)
    assert job_thread_count() == 3  # never more than torch already uses
    monkeypatch.setattr(device_module.os, "cpu_count", lambda: 1)
    assert job_thread_count() == 1
    monkeypatch.setattr(device_module.os, "cpu_count", lambda: None)
    assert job_thread_count() == 1


@pytest.mark.parametrize(("text", "expected"), [("0", None), ("4", 4), (" 2 ", 2), ("", "default")])
def test_job_thread_count_from_the_environment(threads_env, monkeypatch, text, expected):
    monkeypatch.setattr(device_module.os, "cpu_count", lambda: 8)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)
    threads_env.setenv(THREADS_ENV, text)
    assert job_thread_count() == (7 if expected == "default" else expected)
    assert job_thread_count(3) == 3  # the argument wins over the environment
    assert job_thread_count(0) is None


@pytest.mark.parametrize("text", ["-1", "two", "1.5", "off"])
def test_bad_thread_environment_variable(threads_env, text):
    threads_env.setenv(THREADS_ENV, text)
    with pytest.raises(ValueError, match=f"environment variable {THREADS_ENV} must be"):
        job_thread_count()
    with pytest.raises(ValueError, match=THREADS_ENV), limit_torch_threads():
        pass


@pytest.mark.parametrize("threads", [-2, 1.0, "2", True])
def test_bad_thread_argument(threads_env, threads):
    with pytest.raises(ValueError, match="threads must be"):
        job_thread_count(threads)


def test_limit_sets_and_restores_the_thread_count(threads_env):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        with limit_torch_threads(2):
            assert torch.get_num_threads() == 2
        assert torch.get_num_threads() == 3
        threads_env.setenv(THREADS_ENV, "1")
        with limit_torch_threads():
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


def test_opt_out_leaves_torch_alone(threads_env):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        threads_env.setenv(THREADS_ENV, "0")
        with limit_torch_threads():
            assert torch.get_num_threads() == 3
        with limit_torch_threads(0):
            assert torch.get_num_threads() == 3
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


def test_overlapping_jobs_restore_once_the_last_leaves(threads_env):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        first = limit_torch_threads(2)
        second = limit_torch_threads(1)
        first.__enter__()
        second.__enter__()
        assert torch.get_num_threads() == 2  # the first job in sets the count
        first.__exit__(None, None, None)
        assert torch.get_num_threads() == 2  # still one job running
        second.__exit__(None, None, None)
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


def test_limit_restores_after_an_error_and_from_another_thread(threads_env):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        with pytest.raises(RuntimeError, match="boom"), limit_torch_threads(2):
            raise RuntimeError("boom")
        assert torch.get_num_threads() == 3
        seen = []

        def job():
            with limit_torch_threads(2):
                seen.append(torch.get_num_threads())

        worker = threading.Thread(target=job)
        worker.start()
        worker.join()
        assert seen == [2]
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


def test_a_change_made_during_the_job_is_kept(threads_env):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        with limit_torch_threads(2):
            torch.set_num_threads(1)  # e.g. the user's own choice in the napari console
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
