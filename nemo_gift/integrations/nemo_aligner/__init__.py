"""GIFT as a NeMo-Aligner 0.7.0 actor extension (``docs/nemo-aligner.md``).

- :mod:`.rollout`: Aligner's rollout batch -> GIFT training data (torch only).
- :mod:`.loss`: the GIFT micro-batch loss and the step's metrics (torch, megatron-core).
- :mod:`.actor`: :class:`MegatronGPTGiftActorModel`, the actor (needs NeMo-Aligner).
- :mod:`.trainer`: :class:`GiftTrainer`, Aligner's REINFORCE trainer feeding it (needs NeMo-Aligner).
- :mod:`.checkpoint`: NeMo checkpoints (``.nemo``, NeMo 2 directories) and HF import.
- :mod:`.availability`: whether NeMo-Aligner imports here, and why not.

The actor and trainer are imported on first access, so this package imports without NeMo.
"""

__all__ = ["MegatronGPTGiftActorModel", "GiftTrainer", "aligner_unavailable_reason", "require_aligner"]


def __getattr__(name):
    # Lazy, so that ``python -m nemo_gift.integrations.nemo_aligner.availability`` runs cleanly.
    from nemo_gift.integrations.nemo_aligner.availability import aligner_unavailable_reason, require_aligner

    if name == "aligner_unavailable_reason":
        return aligner_unavailable_reason
    if name == "require_aligner":
        return require_aligner
    if name == "MegatronGPTGiftActorModel":
        require_aligner()
        from nemo_gift.integrations.nemo_aligner.actor import MegatronGPTGiftActorModel

        return MegatronGPTGiftActorModel
    if name == "GiftTrainer":
        require_aligner()
        from nemo_gift.integrations.nemo_aligner.trainer import GiftTrainer

        return GiftTrainer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
