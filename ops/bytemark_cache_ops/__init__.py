"""The operator CLI of the Bytemark ticket cache (``bytemark-cache``); not part of the Lambda layer."""
