"""The benchmarks' one image-size parser: a side is a square, HxW a rectangle, anything else a clear error."""

import argparse

import pytest

from pitdist.bench.common import BenchOptionError, image_size, image_sizes, patch_tokens, size_fields, size_name


@pytest.mark.parametrize(
    "text, size", [("28", (28, 28)), ("30x20", (30, 20)), ("30X20", (30, 20)), (" 7x1 ", (7, 1)), ("1", (1, 1))]
)
def test_a_side_is_a_square_and_hxw_a_rectangle(text, size):
    assert image_size(text) == size


@pytest.mark.parametrize(
    "text, message",
    [
        ("30x", "write SIDE or HxW"),
        ("x20", "write SIDE or HxW"),
        ("abc", "write SIDE or HxW"),
        ("", "write SIDE or HxW"),
        ("2.5", "write SIDE or HxW"),
        ("5x3x2", "write SIDE or HxW"),
        ("0x5", "height and width must be >= 1"),
        ("0", "height and width must be >= 1"),
        ("-3x4", "height and width must be >= 1"),
    ],
)
def test_bad_sizes_are_refused_in_words_that_say_what_to_write(text, message):
    with pytest.raises(argparse.ArgumentTypeError, match=message) as err:
        image_size(text)
    assert repr(text) in str(err.value)


def test_a_list_of_sizes_mixes_squares_and_rectangles():
    assert image_sizes("8,30x20, 16") == [(8, 8), (30, 20), (16, 16)]
    with pytest.raises(argparse.ArgumentTypeError, match="write SIDE or HxW"):
        image_sizes("8,30x")
    with pytest.raises(argparse.ArgumentTypeError, match="one or more sizes"):
        image_sizes(",")


def test_argparse_names_the_option_and_the_text():
    parser = argparse.ArgumentParser(prog="bench", exit_on_error=False)
    parser.add_argument("--side", type=image_size)
    assert parser.parse_args(["--side", "30x20"]).side == (30, 20)
    with pytest.raises(argparse.ArgumentError, match=r"--side: '30x': write SIDE or HxW"):
        parser.parse_args(["--side", "30x"])


def test_results_record_height_width_and_a_side_only_for_squares():
    assert size_fields((8, 8)) == {"side": 8, "height": 8, "width": 8}
    assert size_fields((30, 20)) == {"side": None, "height": 30, "width": 20}
    assert size_name((30, 20)) == "30x20"


def test_patch_tokens_counts_a_rectangle_and_refuses_partial_patches():
    assert patch_tokens((30, 20), 1, "--side") == 600
    assert patch_tokens((30, 20), 5, "--side") == 24
    with pytest.raises(BenchOptionError, match=r"--side 30x20: not divisible by model.patch_size = 4"):
        patch_tokens((30, 20), 4, "--side")
