"""The words the legacy world is written with, and the password hashes its users share.

This module owns the data the generator draws from: names (with ASCII twins
that keep generated emails valid), titles, agent names, models, tools, the
malformed values planted as defects, the chat prose messages are cut from,
and the pool of real bcrypt hashes. Everything is fixed or drawn from a
seeded ``random.Random``, so the world stays reproducible.
"""

from __future__ import annotations

import base64
import random
from functools import cache
from typing import Any

import bcrypt

# fmt: off
FIRST_NAMES = (
    ("Alice", "alice"), ("José", "jose"), ("Zoë", "zoe"), ("Søren", "soren"), ("Mária", "maria"),
    ("Chloé", "chloe"), ("Björn", "bjorn"), ("Łukasz", "lukasz"), ("Ana", "ana"),
    ("Mohammed", "mohammed"), ("Wei", "wei"), ("Yuki", "yuki"), ("李", "li"), ("Олена", "olena"),
    ("Priya", "priya"), ("Liam", "liam"), ("Emma", "emma"), ("Noah", "noah"), ("Olivia", "olivia"),
    ("Mateo", "mateo"), ("Sofia", "sofia"), ("Lucas", "lucas"), ("Mia", "mia"), ("Ethan", "ethan"),
    ("Aisha", "aisha"), ("Kenji", "kenji"), ("Fatima", "fatima"), ("Diego", "diego"),
    ("Hannah", "hannah"), ("Omar", "omar"), ("Ingrid", "ingrid"), ("Tomás", "tomas"),
)
LAST_NAMES = (
    ("Smith", "smith"), ("Müller", "muller"), ("García", "garcia"), ("Nguyen", "nguyen"),
    ("Kowalski", "kowalski"), ("O'Brien", "obrien"), ("Dubois", "dubois"), ("Rossi", "rossi"),
    ("Silva", "silva"), ("Kim", "kim"), ("Tanaka", "tanaka"), ("Ivanova", "ivanova"),
    ("Patel", "patel"), ("Johansson", "johansson"), ("Novák", "novak"), ("Yılmaz", "yilmaz"),
    ("Haddad", "haddad"), ("Cohen", "cohen"), ("Chen", "chen"), ("Brown", "brown"),
    ("Wilson", "wilson"), ("Jones", "jones"), ("Martin", "martin"), ("Lee", "lee"),
    ("Walker", "walker"), ("Hall", "hall"), ("Young", "young"), ("King", "king"), ("Wright", "wright"),
    ("López", "lopez"), ("Hill", "hill"), ("Scott", "scott"),
)
DOMAINS = (
    "gmail.com", "outlook.com", "yahoo.co.jp", "proton.me", "example.com", "icloud.com", "web.de",
    "mail.ru",
)
EMOJI = ("🚀", "🌸", "🎧", "🐍", "☕", "✨", "🦊", "🌍")
TITLES = (
    "Help with Python list comprehensions", "Fix my SQL query", "Trip to Lisbon 🇵🇹", "Résumé feedback",
    "Recette de crêpes", "日本語の文法について", "Birthday gift ideas 🎂",
    "Explain transformers simply", "Weekly meal plan", "Cover letter draft",
    "Debug React useEffect loop", "Marathon training plan 🏃", "Tax questions 2024",
    "Learn Spanish verbs", "Kubernetes CrashLoopBackOff", "Wedding speech ideas 💍",
    "Budget spreadsheet formulas", "Why is the sky blue?", "Пример письма", "Summarize this article",
    "Interview prep: system design", "Garden planning 🌱", "Bash script to rename files",
    "Sleep schedule tips", "Translate to German", "Regex for emails", "Book recommendations 📚",
    "Unit tests for parser", "Negotiating salary", "Dockerfile optimisation", "Plan a D&D campaign 🐉",
    "Café business plan", "Understanding inflation", "Write a haiku", "Git rebase vs merge",
    "Physics homework help", "中文学习计划", "Email to landlord", "Data cleaning in pandas",
    "Meditation for beginners 🧘",
)
AGENT_PREFIXES = (
    "Friendly", "Expert", "Quick", "Patient", "Senior", "Creative", "Strict", "Pocket", "Daily",
    "Night-owl", "Tiny", "Pro", "Gentle", "Caffeinated ☕", "Zen 🧘", "Le petit",
)
AGENT_ROLES = (
    "Code Reviewer", "Travel Planner", "Writing Coach", "Math Tutor", "SQL Helper", "Recipe Assistant",
    "Fitness Coach", "Language Partner", "Research Assistant", "Career Advisor", "Translator",
    "Therapist-lite", "Data Analyst", "Poet", "Legal Explainer", "日本語の先生",
)
BUILTIN_AGENTS = (
    "General Assistant", "Code Helper", "Writing Assistant", "Translator 🌐", "Study Buddy",
    "Image Describer", "Summarizer", "Brainstormer 💡", "Email Drafter", "Math Solver", "Travel Guide",
    "Customer Support",
)
STYLES = (
    "Answer concisely.", "Explain step by step.", "Use bullet points where helpful.",
    "Ask a clarifying question when the request is ambiguous.", "Be warm and encouraging.",
    "Cite sources when you can.", "Keep answers under 200 words.", "Prefer code examples.",
)
MODELS = (
    "gpt-4o", "gpt-4o-mini", "gpt-4-turbo", "gpt-3.5-turbo", "claude-3-5-sonnet-20241022",
    "claude-3-haiku-20240307", "llama-3.1-70b-instruct", "mistral-large-latest",
)
TOOL_SETS = (
    '["web_search"]', '["code_interpreter"]', '["web_search", "code_interpreter"]',
    '["image_generation"]', '["calculator", "web_search"]', '["file_search"]',
    '["weather", "calendar"]', '["web_search", "file_search", "code_interpreter"]',
)
BAD_TOOLS = (
    '["web_search", "code_interpreter"', "[web_search, calculator]", "['web_search']",
    '{"tools": ["web_search"]', "web_search,calculator", '["calculator",]',
)
BAD_METADATA = (
    '{"finish_reason": "stop", "latency_ms": 1', "{'client': 'web'}", '{"client": "web",}', "undefined",
    '{"latency_ms": 12}}', '{"text": "unterminated}',
)
CLIENTS = ("web", "ios", "android", "desktop", "api")
SYSTEM_PROMPTS = (
    "You are a helpful assistant.", "You are a concise assistant. Answer briefly.",
    "You are a friendly tutor for beginners.", "You are an expert software engineer.",
    "Respond in the language of the user.", "You are a careful assistant; never guess facts.",
    "You summarize documents faithfully.", "You are a creative writing partner.",
)
SNIPPETS = (
    "Café au lait ☕", "naïve résumé", "Привет, как дела?", "こんにちは世界", "你好，世界", "😀🎉🚀",
    "Grüße aus München", "¿Qué tal? ¡Muy bien!", "مرحبا بالعالم", "שלום עולם", "🙂 thanks!",
    "Zürich → Genève", "pair programming 👩\u200d💻", "∑ x² ≤ ∞", "Ελληνικά", "नमस्ते",
)
UNKNOWN_ROLES = ("moderator", "USER", "narrator", "Assistant")
# fmt: on


_BCRYPT_ALPHABET = bytes.maketrans(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/",
    b"./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
)


def _bcrypt_hash(password: str, rng: random.Random, prefix: str = "2b", cost: int = 4) -> str:
    """A real bcrypt hash with a salt drawn from rng, so reruns are identical."""
    salt22 = base64.b64encode(rng.randbytes(16)).rstrip(b"=").translate(_BCRYPT_ALPHABET)
    salt = f"${prefix}${cost:02d}$".encode() + salt22
    return bcrypt.hashpw(password.encode(), salt).decode()


@cache
def _hash_pool(seed: int, size: int = 32) -> tuple[str, ...]:
    # Hashing per user would take minutes at large scale; users share a pool.
    rng = random.Random(f"bcrypt-pool:{seed}")
    return tuple(_bcrypt_hash(f"pool-{seed}-{i}-{rng.getrandbits(32):08x}", rng) for i in range(size))


@cache
def _corpus() -> bytes:
    """About 64 KB of ASCII chat prose that message content is cut from."""
    rng = random.Random(0)
    nouns = (
        "query",
        "function",
        "recipe",
        "budget",
        "itinerary",
        "essay",
        "dataset",
        "index",
        "migration",
        "playlist",
        "contract",
        "invoice",
        "garden",
        "workout",
        "deadline",
        "paragraph",
        "spreadsheet",
        "pipeline",
        "container",
        "outline",
        "schedule",
        "summary",
    )
    verbs = (
        "check",
        "rewrite",
        "simplify",
        "test",
        "compare",
        "explain",
        "optimize",
        "review",
        "split",
        "merge",
        "translate",
        "measure",
        "document",
        "refactor",
        "plan",
        "debug",
    )
    adjs = ("faster", "cleaner", "safer", "shorter", "clearer", "cheaper", "simpler", "stricter")
    templates = (
        "First, {v} the {n} before you {v2} the {n2}.",
        "If the {n} fails, check whether the {n2} is {a}.",
        "Here is a {a} way to {v} your {n}:",
        "Step {i}: {v} the {n} and then {v2} the {n2}.",
        "I think the {n} is {a}, but the {n2} might be {a2}.",
        "Could you {v} the {n} for me?",
        "The {n} returned {i} rows in {j} ms, which is {a} than before.",
        "Sure! Let's {v} the {n} together.",
        "Thanks, that made the {n} much {a}.",
        "Why does the {n} change when I {v} the {n2}?",
        "In short: {v} less, {v2} more, and keep the {n} {a}.",
        "You can also {v} the {n} with a {a} {n2}.",
    )
    out: list[str] = []
    size = 0
    while size < 65536:
        text = rng.choice(templates).format(
            n=rng.choice(nouns),
            n2=rng.choice(nouns),
            v=rng.choice(verbs),
            v2=rng.choice(verbs),
            a=rng.choice(adjs),
            a2=rng.choice(adjs),
            i=rng.randint(1, 9),
            j=rng.randint(2, 900),
        )
        out.append(text)
        size += len(text) + 1
    return " ".join(out).encode("ascii")


def _vocabulary() -> dict[str, Any]:
    return {
        "first_display": [d for d, _ in FIRST_NAMES],
        "first_ascii": [a for _, a in FIRST_NAMES],
        "last_display": [d for d, _ in LAST_NAMES],
        "last_ascii": [a for _, a in LAST_NAMES],
        "domains": list(DOMAINS),
        "emoji": list(EMOJI),
        "titles": list(TITLES),
        "prefixes": list(AGENT_PREFIXES),
        "roles": list(AGENT_ROLES),
        "builtin_names": list(BUILTIN_AGENTS),
        "styles": list(STYLES),
        "models": list(MODELS),
        "tool_sets": list(TOOL_SETS),
        "bad_tools": list(BAD_TOOLS),
        "clients": list(CLIENTS),
        "system_prompts": list(SYSTEM_PROMPTS),
        "snippets": list(SNIPPETS),
        "corpus": _corpus(),
    }
