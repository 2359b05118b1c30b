"""The base of every config section: unknown keys fail (a typo names its dotted path), and values are
checked on assignment too (a tuned or overridden value obeys the same rules as a loaded one)."""

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)
