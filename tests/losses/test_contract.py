"""The API contract that every registered loss keeps, checked on tiny 2D and 3D tensors.

These tests run over the whole registry, so a new loss is covered as soon as it registers. Values against
hand-derived numbers live in one test file per family.
"""

from __future__ import annotations

import pytest
import torch
from loss_cases import (
    IGNORE_IS_NOT_A_CROP,
    blob_labels,
    build,
    evaluate,
    extra_inputs,
    make_logits,
    one_hot,
    perfect_logits,
)

from scripts.losses import build_loss, list_losses
from scripts.losses.registry import get_loss_spec

NAMES = [spec.name for spec in list_losses()]
SHAPES = {"2d": (2, 3, 12, 10), "3d": (2, 3, 8, 10, 6)}


@pytest.fixture(params=list(SHAPES), ids=list(SHAPES))
def shape(request) -> tuple[int, ...]:
    return SHAPES[request.param]


@pytest.mark.parametrize("name", NAMES)
def test_finite_value_and_gradient(name, shape):
    logits = make_logits(shape).requires_grad_()
    labels = blob_labels(shape, shape[1])
    value = evaluate(build(name), name, logits, labels)
    value.backward()

    assert value.ndim == 0
    assert torch.isfinite(value)
    assert torch.isfinite(logits.grad).all()
    assert logits.grad.abs().sum() > 0


@pytest.mark.parametrize("name", NAMES)
def test_index_target_equals_one_hot(name, shape):
    logits = make_logits(shape)
    labels = blob_labels(shape, shape[1])
    loss = build(name)

    from_index = evaluate(loss, name, logits, labels)
    from_one_hot = evaluate(loss, name, logits, one_hot(labels, shape[1]), labels)
    from_float_index = evaluate(loss, name, logits, labels.float(), labels)

    torch.testing.assert_close(from_one_hot, from_index, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(from_float_index, from_index, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", NAMES)
def test_reductions_agree(name, shape):
    logits = make_logits(shape)
    labels = blob_labels(shape, shape[1])

    per_sample = evaluate(build(name, reduction="none"), name, logits, labels)
    total = evaluate(build(name, reduction="sum"), name, logits, labels)
    mean = evaluate(build(name, reduction="mean"), name, logits, labels)

    assert per_sample.shape == (shape[0],)
    torch.testing.assert_close(total, per_sample.sum())
    torch.testing.assert_close(mean, per_sample.mean())


@pytest.mark.parametrize("name", NAMES)
def test_samples_are_independent(name, shape):
    logits = make_logits(shape)
    labels = blob_labels(shape, shape[1])
    labels[1] = torch.roll(labels[1], shifts=2, dims=-1)
    loss = build(name, reduction="none")

    together = evaluate(loss, name, logits, labels)
    alone = torch.cat([evaluate(loss, name, logits[i : i + 1], labels[i : i + 1]) for i in range(shape[0])])

    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_unused_ignore_index_changes_nothing(name, shape):
    logits = make_logits(shape)
    labels = blob_labels(shape, shape[1])

    plain = evaluate(build(name), name, logits, labels)
    with_ignore = evaluate(build(name, ignore_index=255), name, logits, labels)

    torch.testing.assert_close(with_ignore, plain)


@pytest.mark.parametrize("name", NAMES)
def test_ignored_voxels_equal_cropping(name, shape):
    logits = make_logits(shape)
    labels = blob_labels(shape, shape[1])
    ignored = labels.clone()
    ignored[..., -3:] = 255

    with_ignore = evaluate(build(name, ignore_index=255), name, logits, ignored, labels)
    cropped = evaluate(build(name), name, logits[..., :-3], labels[..., :-3])
    changed_logits = logits.clone()
    changed_logits[..., -3:] = make_logits(changed_logits[..., -3:].shape, seed=7)
    with_other_ignored_logits = evaluate(build(name, ignore_index=255), name, changed_logits, ignored, labels)

    if name not in IGNORE_IS_NOT_A_CROP:
        torch.testing.assert_close(with_ignore, cropped, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(with_other_ignored_logits, with_ignore, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_perfect_prediction_is_minimal(name, shape):
    labels = blob_labels(shape, shape[1])
    loss = build(name)
    perfect = evaluate(loss, name, perfect_logits(labels, shape[1]), labels)

    for seed in range(5):
        other = evaluate(loss, name, make_logits(shape, seed=seed), labels)
        assert perfect < other, f"seed {seed}: perfect {perfect.item()} >= random {other.item()}"


@pytest.mark.parametrize("name", NAMES)
def test_swapping_foreground_classes_changes_nothing(name, shape):
    logits = make_logits(shape)
    labels = blob_labels(shape, shape[1])
    swapped_logits = logits[:, [0, 2, 1]]
    swapped_labels = torch.tensor([0, 2, 1])[labels]
    loss = build(name)

    torch.testing.assert_close(
        evaluate(loss, name, swapped_logits, swapped_labels), evaluate(loss, name, logits, labels), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    "case",
    ["empty_foreground", "full_foreground", "absent_class", "logits_plus_1e4", "logits_minus_1e4", "wrong_1e4"],
)
def test_extreme_inputs_stay_finite(name, case):
    shape = SHAPES["3d"]
    labels = blob_labels(shape, shape[1])
    logits = make_logits(shape)
    if case == "empty_foreground":
        labels = torch.zeros_like(labels)
    elif case == "full_foreground":
        labels = torch.ones_like(labels)
    elif case == "absent_class":
        labels[labels == 2] = 1
    elif case == "logits_plus_1e4":
        logits = perfect_logits(labels, shape[1], margin=1e4)
    elif case == "logits_minus_1e4":
        logits = -perfect_logits(labels, shape[1], margin=1e4)
    elif case == "wrong_1e4":
        logits = perfect_logits(torch.roll(labels, 3, dims=-1), shape[1], margin=1e4)
    logits.requires_grad_()

    value = evaluate(build(name), name, logits, labels)
    value.backward()

    assert torch.isfinite(value), f"{case}: loss {value.item()}"
    assert torch.isfinite(logits.grad).all(), f"{case}: non-finite gradient"


@pytest.mark.parametrize("name", NAMES)
def test_confidently_wrong_voxels_keep_gradient(name):
    shape = SHAPES["3d"]
    labels = blob_labels(shape, shape[1])
    # A logit gap of 40 gives the target class p = e^-40, far below the 1e-7 where a clamped log(p) would cut the
    # gradient, yet representable in float32, so softmax-based region losses keep a (tiny) gradient too.
    logits = perfect_logits(torch.roll(labels, 3, dims=-1), shape[1], margin=20.0).requires_grad_()

    evaluate(build(name), name, logits, labels).backward()

    assert logits.grad.abs().sum() > 0


@pytest.mark.parametrize("name", NAMES)
def test_single_channel_is_binary(name):
    shape = (2, 1, 9, 8, 7)
    labels = blob_labels((2, 2, 9, 8, 7), 2)
    loss = build(name)
    try:
        good = evaluate(loss, name, perfect_logits(labels, 1), labels)
    except ValueError as error:
        assert "channel" in str(error) or "binary" in str(error)
        return
    bad = evaluate(loss, name, -perfect_logits(labels, 1), labels)
    random = evaluate(loss, name, make_logits(shape), labels)

    assert torch.isfinite(good) and torch.isfinite(bad)
    assert good < random < bad


@pytest.mark.parametrize("name", NAMES)
def test_half_precision_matches_float64(name):
    # 2 x 3 x 48^3 = 663,552 values: sums of this size overflow float16 (max 65,504) unless accumulated in float32.
    shape = (2, 3, 48, 48, 48)
    labels = blob_labels(shape, shape[1])
    logits = make_logits(shape, scale=1.0)
    loss = build(name)

    reference = evaluate(loss, name, logits.double(), labels)
    half = evaluate(loss, name, logits.half(), labels)

    assert half.dtype == torch.float32
    torch.testing.assert_close(half.double(), reference, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("name", NAMES)
def test_autocast_computes_in_float32(name):
    shape = SHAPES["3d"]
    labels = blob_labels(shape, shape[1])
    logits = make_logits(shape)
    loss = build(name)
    reference = evaluate(loss, name, logits, labels)

    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        value = evaluate(loss, name, logits.bfloat16(), labels)

    assert value.dtype == torch.float32
    torch.testing.assert_close(value, reference, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("name", NAMES)
def test_gradient_matches_finite_differences(name):
    shape = (2, 3, 4, 5)
    labels = blob_labels(shape, shape[1])
    logits = make_logits(shape, scale=0.5, dtype=torch.float64).requires_grad_()
    loss = build(name)
    extras = extra_inputs(name, logits.detach(), labels)
    extras = {
        key: value.double() if torch.is_tensor(value) and value.is_floating_point() else value
        for key, value in extras.items()
    }

    assert torch.autograd.gradcheck(lambda x: loss(x, labels, **extras), (logits,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_non_finite_logits_raise(name):
    shape = SHAPES["2d"]
    labels = blob_labels(shape, shape[1])
    for bad in (float("nan"), float("inf"), float("-inf")):
        logits = make_logits(shape)
        logits[0, 1, 2, 3] = bad
        with pytest.raises(ValueError, match="non-finite"):
            evaluate(build(name), name, logits, labels)


@pytest.mark.parametrize("name", NAMES)
def test_label_out_of_range_raises(name):
    shape = SHAPES["2d"]
    labels = blob_labels(shape, shape[1])
    labels[0, 0, 0, 0] = 7
    with pytest.raises(ValueError, match="label 7"):
        evaluate(build(name), name, make_logits(shape), labels, blob_labels(shape, shape[1]))

    labels[0, 0, 0, 0] = -1
    with pytest.raises(ValueError, match="label -1"):
        evaluate(build(name, ignore_index=255), name, make_logits(shape), labels, blob_labels(shape, shape[1]))


@pytest.mark.parametrize("name", NAMES)
def test_soft_target_bad_sum_raises(name):
    shape = SHAPES["2d"]
    labels = blob_labels(shape, shape[1])
    target = one_hot(labels, shape[1])
    target[1, :, 2, 3] = 0.5
    with pytest.raises(ValueError, match=r"sums to 1\.5 in sample 1 at voxel \(2, 3\)"):
        evaluate(build(name), name, make_logits(shape), target, labels)

    # All zero is an ignored voxel only with ignore_index.
    target[1, :, 2, 3] = 0.0
    with pytest.raises(ValueError, match="sums to 0 in sample 1 at voxel"):
        evaluate(build(name), name, make_logits(shape), target, labels)
    assert torch.isfinite(evaluate(build(name, ignore_index=255), name, make_logits(shape), target, labels)).all()


@pytest.mark.parametrize("name", NAMES)
def test_shape_mismatch_names_both_shapes(name):
    shape = SHAPES["3d"]
    labels = blob_labels(shape, shape[1])
    logits = make_logits(shape)
    with pytest.raises(ValueError, match=r"\(2, 1, 8, 10, 5\).*\(2, 3, 8, 10, 6\)"):
        build(name)(logits, labels[..., :5], **extra_inputs(name, logits, labels))


@pytest.mark.parametrize("name", NAMES)
def test_class_weights_need_one_per_class(name):
    shape = SHAPES["2d"]
    labels = blob_labels(shape, shape[1])
    with pytest.raises(ValueError, match="class_weights has 2 entries"):
        evaluate(build(name, class_weights=[1.0, 2.0]), name, make_logits(shape), labels)


@pytest.mark.parametrize("name", NAMES)
def test_invalid_options_raise(name):
    with pytest.raises(ValueError, match="reduction"):
        build(name, reduction="average")
    with pytest.raises(ValueError, match="class_weights"):
        build(name, class_weights=[1.0, -1.0, 1.0])
    with pytest.raises(ValueError, match="ignore_index"):
        build(name, ignore_index=1.5)
    with pytest.raises(ValueError, match="batch must be true or false"):
        build(name, batch="sometimes")


@pytest.mark.parametrize("name", NAMES)
def test_every_boolean_option_reads_false_strings(name):
    # Every constructor option with a boolean default, through build_loss as a config gives it.
    options = [option for option, default in get_loss_spec(name).defaults.items() if isinstance(default, bool)]
    for option in options:
        assert getattr(build(name, **{option: "false"}), option) is False, option
        assert getattr(build(name, **{option: "true"}), option) is True, option


@pytest.mark.parametrize("name", [name for name in NAMES if "smooth_nr" in get_loss_spec(name).defaults])
@pytest.mark.parametrize("option", ["smooth_nr", "smooth_dr"])
@pytest.mark.parametrize("value", [-1e-5, float("nan"), float("inf")], ids=["negative", "nan", "inf"])
def test_invalid_smoothing_raises(name, option, value):
    with pytest.raises(ValueError, match=option):
        build(name, **{option: value})


@pytest.mark.parametrize("name", NAMES)
def test_boolean_options_accept_command_line_strings(name):
    # The command line passes `--loss#batch false` as the string "false", which bool() would read as True.
    assert build(name, batch="false").batch is False
    assert build(name, include_background="False").include_background is False
    assert build(name, batch="true").batch is True


def numeric_options(name: str) -> list[str]:
    return [key for key, value in get_loss_spec(name).defaults.items() if type(value) in (int, float)]


@pytest.mark.parametrize("name", [name for name in NAMES if numeric_options(name)])
def test_text_for_a_numeric_option_names_it(name):
    # A command-line override such as --loss#alpha abc reaches the loss as a string.
    option = numeric_options(name)[0]
    with pytest.raises(ValueError, match=rf"{option} of loss '{name}' must be a number .*got 'abc' of type str"):
        build_loss(name, **{option: "abc"})
