"""End-to-end tests: the artifacts of ``sam build`` run through the Lambda runtime emulator."""
