"""System prompts that steer Magpie towards one kind of task, and towards one language.

With nothing but the pre-query template a model writes whatever users typically ask it. A system prompt
that describes the assistant's speciality ("you help with maths problems") shifts the instructions it
writes towards that domain, as the Magpie paper and the original JoyDataForge did for maths, code and
translation. A system prompt written in Chinese is likewise the simplest way to get Chinese instructions
from a multilingual model (the language filter then removes the rest).
"""

from __future__ import annotations

from ...errors import ConfigError

CONTROL_TASKS: dict[str, dict[str, str]] = {
    "math": {
        "en": "You are an AI assistant that helps people solve mathematics problems step by step. Users ask you "
        "a wide range of maths questions, from arithmetic to calculus, probability and proofs.\nYou help them "
        "understand the concepts, work through the calculations and reach the correct answer.",
        "zh": "你是一个帮助用户逐步解决数学问题的AI助手。用户会向你提出各种各样的数学问题，"
        "从算术到微积分、概率和证明。\n"
        "你帮助他们理解概念、完成推导计算并得到正确答案。",
    },
    "code": {
        "en": "You are an AI assistant that helps people with programming. Users ask you a wide range of coding "
        "questions: writing functions, fixing bugs, explaining code, choosing algorithms and tools.\nYou help "
        "them understand the concepts, write and debug code and reach working solutions.",
        "zh": "你是一个帮助用户解决编程问题的AI助手。用户会向你提出各种各样的编程问题：编写函数、修复错误、解释代码、"
        "选择算法和工具。\n你帮助他们理解概念、编写和调试代码，并得到可以运行的解决方案。",
    },
    "translation": {
        "en": "You are an AI assistant that translates text accurately and naturally. Users ask you to translate "
        "sentences, paragraphs and documents between many languages.\nYou convey the meaning, tone and "
        "context of the original faithfully.",
        "zh": "你是一个准确、自然地翻译文本的AI助手。用户会请你在多种语言之间翻译句子、段落和文档。\n"
        "你忠实地传达原文的含义、语气和语境。",
    },
}

# Used when a language is asked for and no other system prompt is given.
LANGUAGE_SYSTEM: dict[str, str] = {
    "zh": "你是一个乐于助人的AI助手。用户会用中文向你提出各种问题和请求，你用中文回答。",
}


def control_system_prompt(task: str, language: str | None = None) -> str:
    """The system prompt of a control task, in ``language`` when there is a version in it (else English)."""
    try:
        versions = CONTROL_TASKS[task]
    except KeyError:
        raise ConfigError(f"unknown control task '{task}' (known: {', '.join(CONTROL_TASKS)})") from None
    return versions.get(language or "en", versions["en"])
