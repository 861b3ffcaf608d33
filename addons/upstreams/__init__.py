"""How a request reaches its upstream: the strategies (direct, Bedrock InvokeModel, Bedrock-native),
AWS credentials and signing, and the provider key pools."""
