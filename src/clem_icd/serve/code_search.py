"""Searching a model's codes by code or description words (`GET /v1/codes`), so a coder can add a
code the model missed: only codes the model knows can be added."""

from __future__ import annotations

import re

_WORD = re.compile(r"\w+")


def _plain(code: str) -> str:
    return code.replace(".", "").lower()


class CodeIndex:
    def __init__(self, codes: list[str], systems: list[str], descriptions: list[str]):
        self.entries = [{"code": c, "system": s, "description": d} for c, s, d in zip(codes, systems, descriptions)]
        self._plain = [_plain(c) for c in codes]
        self._words = [_WORD.findall(d.lower()) for d in descriptions]

    def search(self, query: str, limit: int) -> list[dict]:
        """Best first: the code itself, codes starting with the query (dots ignored: j189 finds
        J18.9), then codes whose description has a word starting with each query word."""
        query = query.strip().lower()
        terms = _WORD.findall(query)
        if not terms:
            return []
        ranked = []
        for i, (plain, words) in enumerate(zip(self._plain, self._words)):
            if plain == _plain(query):
                rank = 0
            elif plain.startswith(_plain(query)):
                rank = 1
            elif all(any(word.startswith(term) for word in words) for term in terms):
                rank = 2
            else:
                continue
            ranked.append((rank, i))
        ranked.sort()
        return [self.entries[i] for _, i in ranked[:limit]]
