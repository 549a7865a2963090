"""The request pipeline: one request record in, exactly one result record (or a dead letter) out."""
