"""Provenance codes: where each generated token came from (int8 `provenance` arrays).

`speculative_sample` marks every emitted token as an accepted draft, a
resample after a rejection, or the bonus token after a fully accepted block;
`autoregressive_sample` marks its tokens `FROM_TARGET`.
"""

# Provenance codes of generated tokens (`provenance` arrays, int8).
NOT_GENERATED = 0  # padding after a row's last token
FROM_TARGET = 1  # sampled from the target directly (autoregressive decoding)
ACCEPTED_DRAFT = 2  # a draft token the target accepted
RESAMPLED = 3  # sampled from norm(max(0, p - q)) after a rejection
BONUS = 4  # sampled from p_{K+1} after all K drafts were accepted
PROVENANCE_NAMES = {
    NOT_GENERATED: "none",
    FROM_TARGET: "target",
    ACCEPTED_DRAFT: "accepted",
    RESAMPLED: "resampled",
    BONUS: "bonus",
}
