"""count_dispatch / dispatch_counts: operators dispatched and host-device synchronisations of tiny functions whose
counts are known."""
import torch

from focus_detr.analysis.dispatch_counts import count_dispatch, dispatch_counts


def test_counts_every_operator_and_no_sync_for_device_only_work():
    x = torch.randn(4, 3)
    counts = dispatch_counts(lambda: (x + 1).relu().sum(0))
    assert (counts.operators, counts.syncs) == (3, 0)
    assert counts.by_operator == {"aten.add": 1, "aten.relu": 1, "aten.sum": 1}


def test_value_reads_are_synchronisations():
    x = torch.arange(6.0)

    def reads():
        x.sum().item()
        bool(x.any())
        int(x[2])
        x.tolist()  # reads CPU memory without any operator: counted all the same

    counts = dispatch_counts(reads)
    assert counts.syncs == 4
    assert counts.syncs_by_reason["aten._local_scalar_dense: reads a value on the host"] == 3
    assert counts.syncs_by_reason["Tensor.tolist: tensor -> Python list"] == 1


def test_data_dependent_shapes_are_synchronisations():
    x = torch.arange(6.0)
    repeats = torch.tensor([1, 2])
    assert dispatch_counts(lambda: x[x > 2]).syncs == 1
    assert dispatch_counts(lambda: x.nonzero()).syncs == 1
    assert dispatch_counts(lambda: x.unique()).syncs == 1
    assert dispatch_counts(lambda: torch.repeat_interleave(repeats)).syncs == 1
    assert dispatch_counts(lambda: torch.repeat_interleave(repeats, output_size=3)).syncs == 0
    # integer indices and a slice assignment of a Python scalar know their sizes
    assert dispatch_counts(lambda: x[torch.tensor([0, 2], device=x.device)]).syncs == 1  # the upload only
    y = torch.zeros(3, 4, dtype=torch.bool)

    def fill():
        y[0, :2] = True

    assert dispatch_counts(fill).syncs == 0


def test_tensors_from_python_data_and_host_copies_are_synchronisations():
    x = torch.arange(3.0)
    counts = dispatch_counts(
        lambda: (torch.tensor([1.0, 2.0], device=x.device), torch.as_tensor([3], device="cpu"), x.new_tensor([1]),
                 x.cpu())
    )
    assert counts.syncs == 4
    # a tensor that already is one is not uploaded again
    assert dispatch_counts(lambda: torch.as_tensor(x)).syncs == 0


def test_host_data_is_not_counted_wherever_the_model_runs():
    # built without a device, a tensor stays on the host on a GPU too; numpy() takes only a host tensor (the cpu()
    # before it is the wait)
    x = torch.arange(3.0)
    assert dispatch_counts(lambda: (torch.tensor([1.0, 2.0]), torch.as_tensor([3]), x.numpy())).syncs == 0
    assert dispatch_counts(lambda: x.cpu().numpy()).syncs == 1


def test_a_gpu_run_does_not_count_host_work():
    # measured for a CUDA model, reading a CPU tensor (host bookkeeping) makes no GPU wait
    x = torch.arange(3)
    counts = dispatch_counts(lambda: (x.tolist(), x.sum().item(), torch.tensor([1])), device="cuda")
    assert counts.operators == 3 and counts.syncs == 0


def test_backward_operators_are_counted():
    layer = torch.nn.Linear(3, 2)
    x = torch.randn(4, 3)
    with torch.no_grad():
        forward = dispatch_counts(lambda: layer(x)).operators
    with count_dispatch() as counts:
        layer(x).sum().backward()
    assert counts.operators > forward + 2  # the sum, and the weight / bias gradients at least
    assert counts.syncs == 0


def test_sync_sites_name_the_calling_line():
    x = torch.arange(3.0)
    counts = dispatch_counts(lambda: x.sum().item(), record_sites=True)
    (site,) = counts.sync_sites
    assert site.startswith(__file__) and "lambda" in site
    assert not dispatch_counts(lambda: x.sum().item()).sync_sites


def test_a_cpu_count_tells_host_inputs_from_device_tensors_as_a_gpu_run_would():
    # on the CPU image.to(self.device) is a no-op that never reaches the dispatcher, so the count missed every copy
    # of the data loader's (pageable) memory to a GPU; and checks in host memory counted as GPU waits
    from detectron2.structures import Boxes, Instances

    weight = torch.randn(3)
    instances = Instances((4, 4), gt_boxes=Boxes(torch.tensor([[0.0, 0.0, 2.0, 2.0]])))
    batch = [{"image": torch.arange(3.0), "instances": instances}]

    def step():
        item = batch[0]
        boxes = item["instances"].gt_boxes.tensor
        assert bool((boxes[:, 2:] >= boxes[:, :2]).all())  # in host memory: waits for no GPU
        pixels = item["image"].to(weight.device) * weight  # a copy to the device
        assert pixels.to(weight.device) is pixels  # already there: none
        boxes = boxes.to(weight.device, torch.float64)  # a copy (and a conversion)
        return pixels.sum().item(), boxes  # a read of device data

    counts = dispatch_counts(step, host_data=batch)
    assert counts.syncs_by_reason == {"Tensor.to: copy between devices (host data to the device)": 2,
                                      "aten._local_scalar_dense: reads a value on the host": 1}
    assert dispatch_counts(step).syncs == 2  # without host_data, the inputs count as device data: no copies


def test_a_cpu_count_keeps_host_built_tensors_and_host_copies_on_the_host():
    weight = torch.randn(3)
    buffer = torch.zeros(3, device=weight.device)

    def run():
        host = torch.zeros(3) + 1  # built on the default device, computed from host data only
        assert host.sum().item() == 3  # a host read
        buffer.copy_(host)  # a copy to the device
        on_host = (buffer * weight).cpu()  # a copy to the host
        return on_host.tolist(), on_host.to(weight.device)  # a host read, and a copy back

    counts = dispatch_counts(run)
    assert counts.syncs_by_reason == {"aten.copy_: copy between devices": 1, "Tensor.cpu: copy to the host": 1,
                                      "Tensor.to: copy between devices (host data to the device)": 1}


def test_a_cpu_count_labels_tensors_built_on_a_named_device_from_host_ones_as_device_data():
    # zeros_like / new_zeros / full_like of host data on a named device were labelled host (their reads free), and
    # as_tensor(host, device=...) was neither a copy nor device data
    weight = torch.randn(3)
    labels = torch.tensor([1, 2])
    read = {"aten._local_scalar_dense: reads a value on the host": 1}
    assert dispatch_counts(lambda: torch.zeros_like(labels, device=weight.device).sum().item(),
                           host_data=[labels]).syncs_by_reason == read
    assert dispatch_counts(lambda: labels.new_zeros(2, device=weight.device).sum().item(),
                           host_data=[labels]).syncs_by_reason == read
    assert dispatch_counts(lambda: torch.full_like(labels, 1, device=weight.device).nonzero(),
                           host_data=[labels]).syncs_by_reason == {"aten.nonzero: data-dependent output size": 1}
    counts = dispatch_counts(lambda: torch.as_tensor(labels, device=weight.device).sum().item(), host_data=[labels])
    assert counts.syncs_by_reason == {"torch.as_tensor: copy between devices (host data to the device)": 1, **read}
    # without a device named, all stay host data
    assert dispatch_counts(lambda: (torch.zeros_like(labels).sum().item(), torch.as_tensor(labels).sum().item()),
                           host_data=[labels]).syncs == 0


def test_tensors_built_in_the_warm_up_are_labelled_as_in_the_count():
    # non-fused AdamW keeps its step on the host: built in an uncounted warm-up, it counted as device data and each
    # parameter's step read as a GPU wait
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=False, foreach=False)
    model(torch.randn(2, 4)).sum().backward()
    assert dispatch_counts(optimizer.step, warmup=1).syncs == 0
    assert dispatch_counts(optimizer.step, warmup=1).operators > 0
