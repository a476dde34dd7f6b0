from reasonft.models.loading import load_student, load_tokenizer, random_student

__all__ = ["load_student", "load_tokenizer", "random_student"]
