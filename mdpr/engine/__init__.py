"""Training engine: the loop (:mod:`.trainer`), schedule and optimizer (:mod:`.solver`), process groups
(:mod:`.distributed`) and run summaries / plots (:mod:`.report`)."""
