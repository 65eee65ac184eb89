"""Layer 9: using a trained model: chat, evaluation reports and reward scores.

Owns the chat client and its worker subprocess (chat, chat_worker), the evaluation report of a run
(evaluate) and a reward model's scores (reward_score). May import every layer below it.
"""
