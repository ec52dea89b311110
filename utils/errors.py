"""The one exception type for bad data: it always names the uid or file and the problem."""


class DataError(ValueError):
    """Bad input data. The message names the uid or file and what is wrong with it."""

    def __init__(self, where: str, problem: str):
        self.where = where
        self.problem = problem
        super().__init__(f"{where}: {problem}")
