"""The reproduction printed under a failure, read back for tests that run it."""


def reproduction(detail: str) -> str:
    """The reproduction printed under a failure, as the code a user would paste."""
    block = detail.split("the spec's value):\n")[1]
    lines = []
    for line in block.splitlines():
        if not line.startswith("    "):
            break
        lines.append(line[4:])
    return "\n".join(lines)
