"""The CUDA-graph wrapper's bookkeeping on CPU (inference/cuda_graphs.py): which shapes get a graph, when one
is captured, and when a call runs eager. `StandInGraph` is the production StaticGraph (static buffers filled
by each call, a static output) with a launch that recomputes from those buffers as a replay would, so a
wrapper that forgot to copy a call's inputs in would give wrong images here too."""

import numpy as np
import pytest
import torch

from inference import Inpainter
from inference.cuda_graphs import GraphedForward, StaticGraph, eager_forward, use_cuda_graphs
from schemas import InpaintParams
from tests.images import box_mask, gradient_image


class StandInGraph(StaticGraph):
    """Records nothing: each launch recomputes the output from the static inputs, as a replay would."""
    captured: list[tuple] = []

    def record(self, run, pool):
        self.run = run
        StandInGraph.captured.append(tuple(tuple(x.shape) for x in self.inputs))
        return run(*self.inputs)

    def launch(self):
        self.output.copy_(self.run(*self.inputs))


class BrokenGraph:
    attempts = 0

    def __init__(self, run, inputs, pool):
        BrokenGraph.attempts += 1
        raise RuntimeError("operation not permitted when stream is capturing")


@pytest.fixture
def model(tiny_model_dir):
    StandInGraph.captured = []
    model = Inpainter(tiny_model_dir)
    yield model
    eager_forward(model.pipe.unet)


def paint(model, **params):
    output = model.run(InpaintParams(prompt="a chair", seed=7, **params), gradient_image(), box_mask())
    return np.asarray(output.images[0])


def test_graphs_give_the_images_eager_gives_and_are_captured_once_per_shape(model):
    eager = paint(model)
    graphed = use_cuda_graphs(model.pipe.unet, capture=StandInGraph)
    assert np.array_equal(paint(model), eager)
    assert np.array_equal(paint(model), eager)  # replayed: no new capture
    assert len(StandInGraph.captured) == 1 and StandInGraph.captured[0][0][0] == 2  # guidance doubles the batch
    paint(model, guidance_scale=1.0)  # no guidance: a batch of one, another shape
    paint(model, samples=2)
    assert [shape[0][0] for shape in StandInGraph.captured] == [2, 1, 4]
    assert len(graphed.graphs) == 3 and set(graphed.capture_seconds) == set(graphed.graphs)


def test_steps_still_report_progress_and_can_stop_the_job(model):
    use_cuda_graphs(model.pipe.unet, capture=StandInGraph)
    steps = []

    def on_step(step, total):
        steps.append(step)
        if step == 3:
            raise InterruptedError("cancelled")

    with pytest.raises(InterruptedError):
        model.run(InpaintParams(prompt="a chair", seed=7), gradient_image(), box_mask(), on_step=on_step)
    assert steps == [1, 2, 3]


def test_a_shape_that_cannot_be_captured_runs_eager_and_is_not_tried_again(model):
    BrokenGraph.attempts = 0
    eager = paint(model)
    graphed = use_cuda_graphs(model.pipe.unet, capture=BrokenGraph)
    assert np.array_equal(paint(model), eager) and np.array_equal(paint(model), eager)
    assert BrokenGraph.attempts == 1 and len(graphed.refused) == 1 and not graphed.graphs


def test_beyond_the_graph_limit_and_with_unusual_arguments_calls_run_eager(model):
    graphed = use_cuda_graphs(model.pipe.unet, capture=StandInGraph)
    graphed.max_graphs = 1
    paint(model)
    paint(model, guidance_scale=1.0)  # a second shape: over the limit, eager
    assert len(graphed.graphs) == 1
    unet = model.pipe.unet
    sample = torch.zeros(2, unet.config.in_channels, 8, 8)
    context = torch.zeros(2, 77, unet.config.cross_attention_dim)
    with torch.no_grad():
        unet(sample, torch.tensor(10), encoder_hidden_states=context, cross_attention_kwargs={"scale": 1.0})
    assert len(StandInGraph.captured) == 1


def test_installed_once_and_removed_cleanly(model):
    first = use_cuda_graphs(model.pipe.unet, capture=StandInGraph)
    assert use_cuda_graphs(model.pipe.unet, capture=StandInGraph) is first
    assert isinstance(model.pipe.unet.forward, GraphedForward)
    eager_forward(model.pipe.unet)
    assert not isinstance(model.pipe.unet.forward, GraphedForward)


def test_the_setting_does_nothing_on_cpu(tiny_model_dir):
    model = Inpainter(tiny_model_dir, cuda_graphs=True)
    assert model.device == "cpu" and not isinstance(model.pipe.unet.forward, GraphedForward)


def test_the_warm_up_job_captures_what_a_default_request_replays(model):
    use_cuda_graphs(model.pipe.unet, capture=StandInGraph)
    assert model.warm_up() > 0
    assert len(StandInGraph.captured) == 1
    paint(model)  # a default 512x512 request: the graph is there already
    assert len(StandInGraph.captured) == 1
