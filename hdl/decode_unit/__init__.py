"""decode_unit"""
