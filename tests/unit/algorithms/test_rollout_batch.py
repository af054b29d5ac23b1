"""The token batch built from prompts and responses, and the resumable prompt order."""

import pytest
import torch

from nemo_gift.algorithms.rollout import PromptSampler, build_token_batch, padded_length
from nemo_gift.algorithms.sft import build_sft_batch


def test_worked_example_of_the_module_docstring():
    batch = build_token_batch([[5, 6]], [[7, 2], [8]], [0, 0], pad_token_id=0, response_logprobs=[[-0.5, -0.25], [-1.0]])
    assert batch["tokens"].tolist() == [[5, 6, 7, 2], [5, 6, 8, 0]]
    assert batch["labels"].tolist() == [[6, 7, 2, 0], [6, 8, 0, 0]]
    assert batch["loss_mask"].tolist() == [[False, True, True, False], [False, True, False, False]]
    assert batch["rollout_logprobs"].tolist() == [[0.0, -0.5, -0.25, 0.0], [0.0, -1.0, 0.0, 0.0]]


def test_prompts_of_different_lengths():
    batch = build_token_batch([[1, 2, 3], [4]], [[9], [8, 7, 6]], [0, 1], pad_token_id=0)
    # response token j of row r is predicted at len(prompt) - 1 + j
    assert batch["labels"][batch["loss_mask"]].tolist() == [9, 8, 7, 6]
    assert batch["tokens"].shape == (2, 4)


@pytest.mark.parametrize("multiple", [1, 2, 4, 16])
def test_padding_to_a_multiple_only_appends_masked_pad_columns(multiple):
    args = ([[5, 6]], [[7, 2, 9], [8]], [0, 0])
    plain = build_token_batch(*args, pad_token_id=0, response_logprobs=[[-0.5, -0.25, -1.5], [-1.0]])
    padded = build_token_batch(*args, pad_token_id=0, response_logprobs=[[-0.5, -0.25, -1.5], [-1.0]],
                               pad_multiple=multiple)
    s = {1: 5, 2: 6, 4: 8, 16: 16}[multiple]
    assert padded["tokens"].shape == (2, s) and padded_length(5, multiple) == s
    for key, value in plain.items():
        assert torch.equal(padded[key][:, :5], value), key
        assert not padded[key][:, 5:].any(), key  # pad id 0, mask False, log-prob 0


def test_sft_batch_pads_to_a_multiple():
    batch = build_sft_batch([([1, 5, 6, 7, 2], [0, 0, 0, 1, 1])], pad_token_id=0, pad_multiple=4)
    assert batch["tokens"].tolist() == [[1, 5, 6, 7, 2, 0, 0, 0]]
    assert batch["labels"][batch["loss_mask"]].tolist() == [7, 2]


def test_pad_multiple_below_one_is_refused():
    with pytest.raises(ValueError, match="pad_multiple must be >= 1, got 0"):
        padded_length(5, 0)


def test_empty_response_is_refused():
    with pytest.raises(ValueError, match="response 1 is empty"):
        build_token_batch([[1]], [[2], []], [0, 0], pad_token_id=0)


def test_sft_batch_puts_the_loss_on_masked_targets():
    batch = build_sft_batch([([1, 5, 6, 7, 2], [0, 0, 0, 1, 1])], pad_token_id=0)
    assert batch["labels"][batch["loss_mask"]].tolist() == [7, 2]


def test_sampler_epochs_and_resume():
    records = list(range(10))
    a = PromptSampler(records, 4, seed=3)
    first = [a.next_batch() for _ in range(3)]  # 2 per epoch: the third starts epoch 1
    assert sorted(first[0] + first[1]) == sorted(set(first[0] + first[1]))  # no repeat in an epoch
    assert a.state_dict() == {"epoch": 1, "offset": 4}
    b = PromptSampler(records, 4, seed=3)
    b.load_state_dict(a.state_dict())
    assert [a.next_batch() for _ in range(3)] == [b.next_batch() for _ in range(3)]
    assert PromptSampler(records, 4, seed=4).next_batch() != PromptSampler(records, 4, seed=3).next_batch()
    with pytest.raises(ValueError, match="exceeds the 10 training prompts"):
        PromptSampler(records, 11, seed=0)
