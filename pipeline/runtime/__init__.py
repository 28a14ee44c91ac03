"""What every stage runs on: the Ray connection, MLflow tracking, atomic writes, memory."""
