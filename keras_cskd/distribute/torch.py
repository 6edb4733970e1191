"""The PyTorch engine: a `torch.distributed` process group, one process per device.

`prepare(model)` does what DDP does for a `torch.nn.Module`, for a compiled
Keras model: same initial weights on every rank, gradients averaged over the
ranks before each optimizer step.
"""

import os

import keras
import torch
import torch.distributed as dist


def setup():
    """The `DataParallel` fields for the `torchrun` processes; joins the process group."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1 and not dist.is_initialized():
        return {"engine": "single device", "num_replicas": 1}
    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            dist.init_process_group("nccl")
        else:
            dist.init_process_group("gloo")
    return {
        "engine": f"torch.distributed ({dist.get_backend()})",
        "num_replicas": dist.get_world_size(),
        "num_processes": dist.get_world_size(),
        "process_index": dist.get_rank(),
    }


def prepare(model):
    """Broadcast rank 0's variables; average gradients and logged metrics over ranks.

    Wraps, on these instances only, `model.optimizer.apply` (all-reduce of the
    gradients before, of trainable BatchNormalization moving statistics after)
    and `model.get_metrics_result` (scalar logs averaged over ranks). Calling
    it again for the same model and optimizer does nothing.
    """
    optimizer = model.optimizer
    if getattr(model, "_cskd_prepared_optimizer", None) is optimizer:
        return model
    with torch.no_grad():
        for variable in model.variables:
            dist.broadcast(variable.value.data, src=0)
    if not getattr(optimizer, "_cskd_averages_gradients", False):
        _average_gradients(optimizer, _batch_norm_statistics(model))
    if not getattr(model.get_metrics_result, "_cskd_averaged", False):
        _average_logged_metrics(model)
    object.__setattr__(model, "_cskd_prepared_optimizer", optimizer)
    return model


def gather_replicas(tensor):
    """Concatenate `tensor` (batch axis first) from every rank; sizes may differ.

    Tensors on the "meta" device (Keras tracing shapes) are returned as is.
    """
    if tensor.device.type == "meta":
        return tensor
    world = dist.get_world_size()
    size = torch.tensor([tensor.shape[0]], dtype=torch.int64, device=tensor.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros((longest,) + tuple(tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
    padded[: tensor.shape[0]] = tensor
    parts = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes)])


def all_reduce_mean(tensors):
    """Average a list of torch tensors over ranks in place, with one all-reduce."""
    if not tensors:
        return
    flat = torch.cat([t.reshape(-1).to(torch.float32) for t in tensors])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for t in tensors:
        n = t.numel()
        t.copy_(flat[offset : offset + n].reshape(t.shape).to(t.dtype))
        offset += n


def _batch_norm_statistics(model):
    variables = []
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable:
            variables += [layer.moving_mean, layer.moving_variance]
    return variables


def _average_gradients(optimizer, statistics):
    apply = optimizer.apply

    def averaged_apply(grads, trainable_variables=None):
        with torch.no_grad():
            all_reduce_mean([g for g in grads if g is not None])
        result = apply(grads, trainable_variables) if trainable_variables is not None else apply(grads)
        with torch.no_grad():
            all_reduce_mean([v.value.data for v in statistics])
        return result

    object.__setattr__(optimizer, "apply", averaged_apply)
    object.__setattr__(optimizer, "_cskd_averages_gradients", True)


def _average_logged_metrics(model):
    get_metrics_result = model.get_metrics_result

    def averaged_metrics_result():
        results = get_metrics_result()
        names = [n for n, v in results.items() if _is_scalar(v)]
        if names:
            values = torch.stack([torch.as_tensor(results[n], dtype=torch.float32).reshape(()).cpu() for n in names])
            device = "cuda" if dist.get_backend() == "nccl" else "cpu"
            values = values.to(device)
            dist.all_reduce(values)
            values = (values / dist.get_world_size()).cpu()
            results = dict(results)
            for name, value in zip(names, values):
                results[name] = value
        return results

    averaged_metrics_result._cskd_averaged = True
    object.__setattr__(model, "get_metrics_result", averaged_metrics_result)


def _is_scalar(value):
    if isinstance(value, torch.Tensor):
        return value.numel() == 1
    return isinstance(value, (int, float))
