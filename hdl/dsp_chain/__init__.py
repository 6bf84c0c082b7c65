"""dsp_chain"""
