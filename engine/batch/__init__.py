"""The batch engine: every case of a folder through one loaded model, pipelined, resumable, with records and a
summary; ``tilewise batch`` (:mod:`..commands.batch`) parses its flags and calls it, Ray actors
(:mod:`..distributed`) run its cases elsewhere."""
