"""Every built-in step kind's settings class, by the name pipeline files use.

Only configs are imported here, never the steps that run them: a pipeline file validates (and ``joyforge
schema`` or ``validate`` answer) without loading the engine or any model code.
"""

from __future__ import annotations

from ..methods.critique.config import CritiqueReviseConfig
from ..methods.dedup.config import MinHashDedupConfig
from ..methods.dialogue.config import DialogueIntentConfig, IntentBinaryConfig
from ..methods.dpo.config import PreferencePairsConfig
from ..methods.evol_instruct.config import EvolInstructConfig
from ..methods.generate.config import GenerateConfig, LabelConfig
from ..methods.joint.config import JointConfig
from ..methods.magpie.config import MagpieInstructionConfig, MagpieResponseConfig, MagpieTagConfig
from ..methods.rewrite.config import RewriteConfig
from ..methods.seedless.config import SeedlessConfig
from ..methods.tool_dialogue.config import ToolDialogueConfig
from ..methods.verify.config import VerifyConfig
from ..methods.vote.config import CascadeConfig, VoteConfig
from .base import StepConfig

BUILTIN_CONFIGS: dict[str, type[StepConfig]] = {
    config.kind: config
    for config in (
        GenerateConfig,
        LabelConfig,
        MinHashDedupConfig,
        VoteConfig,
        CascadeConfig,
        JointConfig,
        CritiqueReviseConfig,
        EvolInstructConfig,
        RewriteConfig,
        SeedlessConfig,
        DialogueIntentConfig,
        IntentBinaryConfig,
        MagpieInstructionConfig,
        MagpieResponseConfig,
        MagpieTagConfig,
        PreferencePairsConfig,
        ToolDialogueConfig,
        VerifyConfig,
    )
}
